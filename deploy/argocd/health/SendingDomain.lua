-- Argo CD health of a mailfleet.io SendingDomain: Healthy once a key signs and DNS checks pass,
-- Progressing while a published record is awaited or a check could not run, Degraded when DNS
-- says something wrong.
local hs = {status = "Progressing", message = "Waiting for the operator to check the domain"}
local st = obj.status
if st == nil then return hs end
local gen = obj.metadata.generation
if gen ~= nil and (st.observedGeneration == nil or st.observedGeneration < gen) then
  hs.message = "Waiting for the operator to reconcile generation " .. gen
  return hs
end
local waiting = {AwaitingPublication = true, RotationPending = true, DNSError = true}
if st.conditions ~= nil then
  for _, c in ipairs(st.conditions) do
    if c.type == "Ready" then
      local why = (c.reason or "") .. ": " .. (c.message or "")
      if c.status == "True" then return {status = "Healthy", message = why} end
      if c.status == "Unknown" or waiting[c.reason] then
        return {status = "Progressing", message = why}
      end
      return {status = "Degraded", message = why}
    end
  end
end
return hs
