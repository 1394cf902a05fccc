-- device_down.lua: a page only for a device down 5 minutes; resolved once
-- it has been back 2 minutes.
local F = "../../../tests/fixtures/mist/"
local start = 1793606400 -- 2026-11-02T08:00:00Z

-- The sample AP event, stamped MINUTES after the start, as Mist's would be
-- (the same event twice within the source's dedupe window is a duplicate).
local function ap(kind, minutes)
  local body = json.read(F .. "device-events--ap-" .. kind .. "-const.json")
  body.events[1].timestamp = start + minutes * 60
  return body
end
local sw_down = F .. "device-events--sw-disconnected-const.json"
local sw_up = json.read(sw_down)
sw_up.events[1].type = "SW_CONNECTED"

local key = "device-down:5c:5b:35:00:00:01"

return {
  source = "mist",
  rules = "device_down",
  start = "2026-11-02T08:00:00Z",
  steps = {
    { at = "0s", payload = ap("disconnected", 0), expect = {} },
    { at = "3m", name = "back within 5 minutes: nothing at all", payload = ap("connected", 3),
      expect = {} },
    { at = "8m", expect = {} },
    { at = "10m", payload = ap("disconnected", 10), expect = {} },
    { at = "14m", expect = {} },
    { at = "15m", name = "down for 5 minutes", expect = {
      { target = "oncall", title = "AP 5c:5b:35:00:00:01 is down", action = "trigger",
        text = "Down since 08:10 UTC", dedup_key = key, severity = "critical",
        fields = { site = "4ac1dcf4-9d8b-7211-65c4-057819f0862b" },
        request = { body = { event_action = "trigger", dedup_key = key } } },
    } },
    { at = "16m", payload = ap("connected", 16), expect = {} },
    { at = "17m", name = "down again before it was stable: still one incident",
      payload = ap("disconnected", 17), expect = {} },
    { at = "18m", payload = ap("connected", 18), expect = {} },
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
