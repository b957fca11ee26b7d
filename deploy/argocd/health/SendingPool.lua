-- Argo CD health of a mailfleet.io SendingPool, from the status the operator writes.
local hs = {status = "Progressing", message = "Waiting for the operator to reconcile the pool"}
local st = obj.status
if st == nil then return hs end
local gen = obj.metadata.generation
if gen ~= nil and (st.observedGeneration == nil or st.observedGeneration < gen) then
  hs.message = "Waiting for the operator to reconcile generation " .. gen
  return hs
end
local ready, ipsHealthy = nil, nil
if st.conditions ~= nil then
  for _, c in ipairs(st.conditions) do
    if c.type == "Ready" then ready = c end
    if c.type == "IPsHealthy" then ipsHealthy = c end
  end
end
if ready == nil then return hs end
local why = (ready.reason or "") .. ": " .. (ready.message or "")
-- Conditions the operator cannot fix alone: a user or an IP has to change.
local broken = {DKIMSecretMissing = true, SecretMissing = true, RenderFailed = true}
if ready.status == "False" and broken[ready.reason] then
  return {status = "Degraded", message = why}
end
-- The health check found no IP left healthy (IPsHealthy, not Ready: with noHealthyIP
-- keepSending the last IP still sends, so the pods stay Ready while mail goes out from it).
if ipsHealthy ~= nil and ipsHealthy.status == "False" and ipsHealthy.reason == "NoHealthyIP" then
  return {status = "Degraded", message = "NoHealthyIP: " .. (ipsHealthy.message or "")}
end
-- Every address quarantined or standby: nothing sends, whatever the pods say.
if st.ips ~= nil and #st.ips > 0 then
  local usable, quarantined, warming = 0, 0, 0
  for _, ip in ipairs(st.ips) do
    if ip.state == "active" or ip.state == "warming" then usable = usable + 1 end
    if ip.state == "quarantined" then quarantined = quarantined + 1 end
    if ip.state == "warming" then warming = warming + 1 end
  end
  if usable == 0 then
    return {status = "Degraded", message = "NoHealthyIP: no address is active or warming (" ..
            quarantined .. " quarantined)"}
  end
  if st.drainingPods ~= nil and #st.drainingPods > 0 then
    return {status = "Progressing", message = "Draining " .. #st.drainingPods ..
            " pod(s) before a scale-down (" .. (st.handoffLeft or 0) .. " messages left)"}
  end
  if ready.status ~= "True" then return {status = "Progressing", message = why} end
  if warming > 0 then
    return {status = "Progressing", message = "Warming " .. warming .. " IP(s); " .. why}
  end
elseif st.drainingPods ~= nil and #st.drainingPods > 0 then
  return {status = "Progressing", message = "Draining " .. #st.drainingPods ..
          " pod(s) before a scale-down (" .. (st.handoffLeft or 0) .. " messages left)"}
end
if ready.status ~= "True" then return {status = "Progressing", message = why} end
return {status = "Healthy", message = why}
