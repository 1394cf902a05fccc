-- A switch down at a site opens one ServiceNow incident for the site; more
-- switches going down add work notes to it; it is resolved when the last
-- of them is back.
--
-- The `switch_down` alarm lists the switches it is about. The rule keeps
-- the site's down switches in brume.state (shared, durable) and sends every
-- message with the dedup_key "switch-down:<site>": the servicenow target
-- creates the incident for the first (correlation_id = that key), adds a
-- work note for each later one, and resolves it on action = "resolve".
-- SW_CONNECTED device events take switches off the list.
local mist = require "brume.mist"

local function names(set)
  local t = {}
  for mac in pairs(set) do t[#t + 1] = mac end
  table.sort(t)
  return table.concat(t, ", ")
end

local function count(set)
  local n = 0
  for _ in pairs(set) do n = n + 1 end
  return n
end

local function ticket(site, down, text, action)
  brume.send("tickets", {
    title = ("Switch down at site %s"):format(site),
    text = ("%s Down now: %s."):format(text, count(down) > 0 and names(down) or "none"),
    severity = "error",
    dedup_key = "switch-down:" .. site,
    action = action,
  })
end

return {
  topics = { "alarms", "device-events" },
  where = { type = { "switch_down", "SW_CONNECTED" } },
  on_event = function(ev, ctx)
    local site = ev.site_id
    if not site then return end
    local key = "switch-down:" .. site
    local down = brume.state.get(key) or {}
    if ev.type == "switch_down" then
      local added = {}
      for i, mac in ipairs(ev.switches or {}) do
        mac = mist.mac(mac)
        if not down[mac] then
          down[mac] = (ev.hostnames or {})[i] or true
          added[#added + 1] = mac
        end
      end
      if #added == 0 then return end
      brume.state.set(key, down)
      ticket(site, down, ("Mist reports %s down."):format(table.concat(added, ", ")))
    else
      local mac = mist.mac(ev.mac)
      if not down[mac] then return end
      down[mac] = nil
      if next(down) == nil then
        brume.state.set(key, nil)
        ticket(site, down, ("%s is back; every switch is up."):format(mac), "resolve")
      else
        brume.state.set(key, down)
        ticket(site, down, ("%s is back."):format(mac))
      end
    end
  end,
}
