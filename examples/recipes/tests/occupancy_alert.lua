-- occupancy_alert.lua: a full zone, at most once per 30 minutes.
local F = "../../../tests/fixtures/mist/"
local start = 1767225600 -- 2026-01-01T00:00:00Z, the default start

-- The zone over its limit, as Mist would report it MINUTES after the start
-- (the same alert twice within the source's dedupe window is a duplicate).
local function full(minutes)
  local body = json.read(F .. "occupancy-alerts--openapi-schema-example.json")
  body.events[1].site_name = "HQ"
  local alert = body.events[1].alert_events[1]
  alert.zone_name, alert.current_occupancy, alert.occupancy_limit = "Cafeteria", 130, 120
  alert.timestamp = start + minutes * 60
  return body
end

local message = {
  target = "facilities", title = "Zone Cafeteria is over its occupancy limit",
  text = "130 people, limit 120 (COMPLIANCE-VIOLATION)", severity = "warning",
  fields = { { "site", "HQ" }, { "zone", "4495020a-236f-46e0-9453-e3f9cc6476f4" } },
}

return {
  source = "mist",
  rules = "occupancy_alert",
  steps = {
    { at = "0s", payload = full(0), expect = { message } },
    { at = "10m", name = "still full: held back", payload = full(10), expect = {} },
    { at = "25m", payload = full(25), expect = {} },
    { at = "31m", name = "a new window", payload = full(31), expect = { message } },
    { at = "32m", name = "the placeholder sample passes too",
      payload = F .. "occupancy-alerts--openapi-schema-example.json", expect = {} },
  },
}
