-- Argo CD resource action "retry" of a TrafficConfig: roll the rolled-back candidate out again from its first step.
-- It asks through the status, as Argo CD's Rollout actions set status.abort: a new token in
-- status.requests.retry, the time, which the operator acts on once. Argo CD sends a change of the status through
-- the status subresource (argoproj/argo-cd#4690), so the spec (Git's) is untouched and a sync never reverts it.
local os = require("os")
if obj.status == nil then
  obj.status = {}
end
if obj.status.requests == nil then
  obj.status.requests = {}
end
obj.status.requests.retry = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
