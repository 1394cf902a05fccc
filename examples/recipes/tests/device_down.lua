-- device_down.lua: a page only for a device down 5 minutes; resolved once
-- it has been back 2 minutes.
local F = "../../../tests/fixtures/mist/"
local ap_down = F .. "device-events--ap-disconnected-const.json"
local ap_up = F .. "device-events--ap-connected-const.json"
local sw_down = F .. "device-events--sw-disconnected-const.json"
local sw_up = json.read(sw_down)
sw_up.events[1].type = "SW_CONNECTED"

local key = "device-down:5c:5b:35:00:00:01"

return {
  source = "mist",
  rules = "device_down",
  start = "2026-11-02T08:00:00Z",
  steps = {
    { at = "0s", payload = ap_down, expect = {} },
    { at = "3m", name = "back within 5 minutes: nothing at all", payload = ap_up, expect = {} },
    { at = "8m", expect = {} },
    { at = "10m", payload = ap_down, expect = {} },
    { at = "14m", expect = {} },
    { at = "15m", name = "down for 5 minutes", expect = {
      { target = "oncall", title = "AP 5c:5b:35:00:00:01 is down", action = "trigger",
        text = "Down since 08:10 UTC", dedup_key = key, severity = "critical",
        fields = { site = "4ac1dcf4-9d8b-7211-65c4-057819f0862b" },
        request = { body = { event_action = "trigger", dedup_key = key } } },
    } },
    { at = "16m", payload = ap_up, expect = {} },
    { at = "17m", name = "down again before it was stable: still one incident",
      payload = ap_down, expect = {} },
    { at = "18m", payload = ap_up, expect = {} },
    { at = "20m", name = "back for 2 minutes", expect = {
      { title = "AP 5c:5b:35:00:00:01 is back", action = "resolve", dedup_key = key,
        request = { body = { event_action = "resolve", dedup_key = key } } },
    } },
    { at = "30m", name = "a switch", payload = sw_down, expect = {} },
    { at = "35m", expect = {
      { title = "Switch 5c:5b:35:00:00:01 is down", action = "trigger" },
    } },
    { at = "40m", payload = sw_up, expect = {} },
    { at = "42m", expect = { { title = "Switch 5c:5b:35:00:00:01 is back", action = "resolve" } } },
  },
}
