-- Argo CD health check for policy.rollouts.io/PolicyRollout (docs/gitops.md).
-- Reads the kstatus conditions the operator writes; falls back to status.phase.
local hs = { status = "Progressing", message = "Waiting for the policy-rollouts operator" }

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

if obj.status == nil then
  return hs
end

local message = obj.status.message or obj.status.phase or ""
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = obj.status.phase
local ready = condition("Ready")
local stalled = condition("Stalled")
local progressing = condition("Progressing")

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message
elseif (stalled ~= nil and stalled.status == "True")
    or phase == "RollingBack" or phase == "RolledBack" or phase == "Failed" or phase == "Aborted" then
  hs.status = "Degraded"
  hs.message = message
elseif (progressing ~= nil and progressing.status == "False" and progressing.reason == "WaitingForHuman")
    or phase == "AwaitingApproval" then
  hs.status = "Suspended"
  hs.message = "Waiting for a human: kubectl policyrollout promote/approve (" .. message .. ")"
elseif phase == "Promoted" then
  hs.status = "Healthy"
  hs.message = message
else
  hs.status = "Progressing"
  hs.message = message
end
return hs
