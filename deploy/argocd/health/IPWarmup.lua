-- Argo CD health of a mailfleet.io IPWarmup: Progressing while it warms, Suspended when paused,
-- Degraded when it cannot apply (no pool, no address of it) or its health gates hold it.
local hs = {status = "Progressing", message = "Waiting for the operator to start the warmup"}
local st = obj.status
if st == nil then return hs end
local gen = obj.metadata.generation
if gen ~= nil and (st.observedGeneration == nil or st.observedGeneration < gen) then
  hs.message = "Waiting for the operator to reconcile generation " .. gen
  return hs
end
local ready = nil
if st.conditions ~= nil then
  for _, c in ipairs(st.conditions) do
    if c.type == "Ready" then ready = c end
  end
end
if ready ~= nil and ready.status == "False" then
  return {status = "Degraded", message = (ready.reason or "") .. ": " .. (ready.message or "")}
end
local day = ""
if st.day ~= nil then day = "day " .. st.day end
if st.todayCap ~= nil then day = day .. ", cap " .. st.todayCap .. " a day" end
if st.phase == "Complete" then return {status = "Healthy", message = "Complete"} end
if st.phase == "Paused" then return {status = "Suspended", message = "Paused at " .. day} end
if st.phase == "Holding" then
  local msg = "Holding at " .. day
  if ready ~= nil and ready.message ~= nil then msg = msg .. ": " .. ready.message end
  return {status = "Degraded", message = msg}
end
if st.phase == "Warming" then return {status = "Progressing", message = "Warming: " .. day} end
return hs
