-- Argo CD health of a mailfleet.io DeliveryPolicy, from the status the operator writes.
local hs = {status = "Progressing", message = "Waiting for the operator to read the policy"}
local st = obj.status
if st == nil then return hs end
local gen = obj.metadata.generation
if gen ~= nil and (st.observedGeneration == nil or st.observedGeneration < gen) then
  hs.message = "Waiting for the operator to read generation " .. gen
  return hs
end
if st.conditions ~= nil then
  for _, c in ipairs(st.conditions) do
    if c.type == "Ready" then
      local why = (c.reason or "") .. ": " .. (c.message or "")
      if c.status == "True" then return {status = "Healthy", message = why} end
      if c.status == "False" then return {status = "Degraded", message = why} end
      return {status = "Progressing", message = why}
    end
  end
end
return hs
