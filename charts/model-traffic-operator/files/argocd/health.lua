-- Argo CD resource health of model-traffic-operator's kinds (modeltraffic.io): ManagedAIServiceBackend,
-- VirtualModel, TrafficConfig. One script for the three; argocd-cm.yaml beside it sets it for each kind.
-- Argo CD runs it with the live object in the global `obj` (its Lua is gopher-lua, Lua 5.1: no goto, no
-- integer division). It reads what the operator writes: status.observedGeneration, the conditions
-- Ready / Stalled and, for a TrafficConfig, status.phase.
--   Progressing  the operator has not reconciled the latest spec yet (no status.observedGeneration, or
--                one behind metadata.generation), or Ready is False/Unknown (the Ready message says why)
--   Degraded     Stalled=True (it cannot progress until the world or the spec changes), or a
--                TrafficConfig whose rollout failed (phase Failed: rolled back)
--   Suspended    a TrafficConfig whose rollout is paused (phase Paused)
--   Healthy      Ready=True
local hs = {}

local function condition(conditions, ctype)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function says(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local function number(n)
  if type(n) == "number" then
    return string.format("%d", n)
  end
  return "?"
end

local status = obj.status
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile generation " .. number(generation)
  return hs
end
if generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator: generation " .. number(generation) ..
    " is not observed yet (observedGeneration " .. number(status.observedGeneration) .. ")"
  return hs
end

local ready = condition(status.conditions, "Ready")
local stalled = condition(status.conditions, "Stalled")
local isStalled = stalled ~= nil and stalled.status == "True"
local rollout = obj.kind == "TrafficConfig"

if rollout and status.phase == "Failed" then
  hs.status = "Degraded"
  if isStalled then
    hs.message = says(stalled, "Rollout failed")
  else
    -- The rollback is recorded, the conditions are not written yet (they follow within the reconcile).
    hs.message = "Rollout of " .. (status.candidateVersion or "the candidate") .. " failed and was rolled back; " ..
      "all traffic to " .. (status.stableVersion or "the stable version")
  end
  return hs
end
if isStalled then
  hs.status = "Degraded"
  hs.message = says(stalled, "Stalled")
  return hs
end
if ready ~= nil and ready.status == "True" then
  if rollout and status.phase == "Paused" then
    hs.status = "Suspended"
    hs.message = says(ready, "Rollout paused")
  else
    hs.status = "Healthy"
    hs.message = says(ready, "Ready")
  end
  return hs
end
hs.status = "Progressing"
hs.message = says(ready, "Waiting for the Ready condition")
return hs
