-- Argo CD resource action "pause" of a TrafficConfig: hold the rollout where it is (a rollout that starts later too) until resumed.
-- It asks through the status, as Argo CD's Rollout actions set status.abort: a new token in
-- status.requests.pause, the time, which the operator acts on once. Argo CD sends a change of the status through
-- the status subresource (argoproj/argo-cd#4690), so the spec (Git's) is untouched and a sync never reverts it.
local os = require("os")
if obj.status == nil then
  obj.status = {}
end
if obj.status.requests == nil then
  obj.status.requests = {}
end
obj.status.requests.pause = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
