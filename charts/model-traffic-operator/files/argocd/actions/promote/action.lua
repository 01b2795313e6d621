-- Argo CD resource action "promote" of a TrafficConfig: promote the candidate now, skipping the remaining steps (it must be Ready).
-- It asks through the status, as Argo CD's Rollout actions set status.abort: a new token in
-- status.requests.promote, the time, which the operator acts on once. Argo CD sends a change of the status through
-- the status subresource (argoproj/argo-cd#4690), so the spec (Git's) is untouched and a sync never reverts it.
local os = require("os")
if obj.status == nil then
  obj.status = {}
end
if obj.status.requests == nil then
  obj.status.requests = {}
end
obj.status.requests.promote = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
