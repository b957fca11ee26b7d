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
local waiting = {AwaitingPublication = true, DNSError = true}
local ready, published = nil, nil
if st.conditions ~= nil then
  for _, c in ipairs(st.conditions) do
    if c.type == "Ready" then ready = c end
    if c.type == "DKIMPublished" then published = c end
  end
end
if ready == nil then return hs end
local why = (ready.reason or "") .. ": " .. (ready.message or "")
if ready.status == "True" then
  -- A rotation's new selector waits for its TXT record (DKIMPublished True, RotationPending):
  -- the old key still signs, and someone has to publish the new one.
  if published ~= nil and published.reason == "RotationPending" then
    return {status = "Progressing", message = "RotationPending: " .. (published.message or "")}
  end
  return {status = "Healthy", message = why}
end
if ready.status == "Unknown" or waiting[ready.reason] then
  return {status = "Progressing", message = why}
end
return {status = "Degraded", message = why}
