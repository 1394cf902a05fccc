-- switch_down_ticket.lua: one incident per site; work notes; resolved when
-- the last switch is back.
local F = "../../../tests/fixtures/mist/"
local alarm = F .. "alarms--switch-down-const-alarm-defs.json"
local site = "819b44b2-42ef-459d-8e59-29c5577b2330"

local second = json.read(alarm)
second.events[1].id = "6f1d8a52-0000-4000-8000-000000000002"
second.events[1].switches = { "f4bfa806c96d" }
second.events[1].hostnames = { "switch_2" }

-- A switch back: Mist's SW_DISCONNECTED sample, turned around.
local function back(mac)
  local ev = json.read(F .. "device-events--sw-disconnected-const.json")
  ev.events[1].type, ev.events[1].mac, ev.events[1].site_id = "SW_CONNECTED", mac, site
  return ev
end

local title = "Switch down at site " .. site
local key = "switch-down:" .. site

return {
  source = "mist",
  rules = "switch_down_ticket",
  start = "2026-11-02T08:00:00Z",
  steps = {
    { at = "0s", payload = alarm, expect = {
      { target = "tickets", title = title, dedup_key = key, severity = "error",
        text = "Mist reports f4:bf:a8:06:c9:6c down. Down now: f4:bf:a8:06:c9:6c." },
    } },
    { at = "5m", name = "Mist sent it twice (org and site): deduped", payload = alarm,
      expect = {} },
    { at = "20m", name = "another switch: a work note", payload = second, expect = {
      { dedup_key = key, text = "Mist reports f4:bf:a8:06:c9:6d down. "
                                .. "Down now: f4:bf:a8:06:c9:6c, f4:bf:a8:06:c9:6d." },
    } },
    { at = "25m", name = "a switch that was not down", payload = back("aabbccddeeff"),
      expect = {} },
    { at = "30m", payload = back("f4bfa806c96c"), expect = {
      { dedup_key = key, text = "f4:bf:a8:06:c9:6c is back. Down now: f4:bf:a8:06:c9:6d." },
    } },
    { at = "40m", name = "the last one: resolved", payload = back("f4bfa806c96d"), expect = {
      { dedup_key = key, action = "resolve",
        text = "f4:bf:a8:06:c9:6d is back; every switch is up. Down now: none." },
    } },
    { at = "50m", name = "down again: a new incident", payload = second, expect = {
      { dedup_key = key, text = "Mist reports f4:bf:a8:06:c9:6d down. "
                                .. "Down now: f4:bf:a8:06:c9:6d." },
    } },
  },
}
