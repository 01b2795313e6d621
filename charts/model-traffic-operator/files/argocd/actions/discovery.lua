-- Argo CD resource actions of a TrafficConfig (modeltraffic.io): which of promote, abort, retry, pause and resume
-- apply now. Argo CD runs it with the live object in `obj` (gopher-lua, Lua 5.1) and shows the actions in its UI
-- and `argocd app actions list`; each action (actions/<name>/action.lua) writes a request in the status, which
-- the operator acts on once (status.handledRequests records it) and which a sync never reverts.
--   promote, abort  a rollout is under way (status.candidateVersion, a phase before its end)
--   retry           the candidate was rolled back (phase Failed)
--   pause / resume  the rollout is not / is held by a pause request (status.pausedByRequest)
-- An action whose request is still pending (its token not yet in status.handledRequests) is disabled.
local actions = {}
local status = obj.status or {}
local requests = status.requests or {}
local handled = status.handledRequests or {}
local phase = status.phase
local underway = status.candidateVersion ~= nil and (phase == "Initializing" or phase == "Progressing"
  or phase == "Paused" or phase == "WaitingPromotion")

local function offer(name, applies)
  local pending = requests[name] ~= nil and requests[name] ~= handled[name]
  actions[name] = {["disabled"] = pending or not applies}
end

offer("promote", underway)
offer("abort", underway)
offer("retry", status.candidateVersion ~= nil and phase == "Failed")
offer("pause", status.pausedByRequest ~= true)
offer("resume", status.pausedByRequest == true)
return actions
