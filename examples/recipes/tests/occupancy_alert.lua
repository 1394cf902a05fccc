-- occupancy_alert.lua: a full zone, at most once per 30 minutes.
local F = "../../../tests/fixtures/mist/"
local full = json.read(F .. "occupancy-alerts--openapi-schema-example.json")
full.events[1].site_name = "HQ"
local alert = full.events[1].alert_events[1]
alert.zone_name, alert.current_occupancy, alert.occupancy_limit = "Cafeteria", 130, 120

local message = {
  target = "facilities", title = "Zone Cafeteria is over its occupancy limit",
  text = "130 people, limit 120 (COMPLIANCE-VIOLATION)", severity = "warning",
  fields = { { "site", "HQ" }, { "zone", "4495020a-236f-46e0-9453-e3f9cc6476f4" } },
}

return {
  source = "mist",
  rules = "occupancy_alert",
  steps = {
    { at = "0s", payload = full, expect = { message } },
    { at = "10m", name = "still full: held back", payload = full, expect = {} },
    { at = "25m", payload = full, expect = {} },
    { at = "31m", name = "a new window", payload = full, expect = { message } },
    { at = "32m", name = "the placeholder sample passes too",
      payload = F .. "occupancy-alerts--openapi-schema-example.json", expect = {} },
  },
}
