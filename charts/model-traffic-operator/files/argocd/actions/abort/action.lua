-- Argo CD resource action "abort" of a TrafficConfig: roll back: all traffic to the stable version; the phase is Failed until a retry or a new candidate.
-- It asks through the status, as Argo CD's Rollout actions set status.abort: a new token in
-- status.requests.abort, the time, which the operator acts on once. Argo CD sends a change of the status through
-- the status subresource (argoproj/argo-cd#4690), so the spec (Git's) is untouched and a sync never reverts it.
local os = require("os")
if obj.status == nil then
  obj.status = {}
end
if obj.status.requests == nil then
  obj.status.requests = {}
end
obj.status.requests.abort = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
