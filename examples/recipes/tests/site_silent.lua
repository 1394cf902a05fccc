-- site_silent.lua: a site heard of nothing for 2 hours, then heard again.
local F = "../../../tests/fixtures/mist/"
local site = "4ac1dcf4-9d8b-7211-65c4-057819f0862b"

return {
  source = "mist",
  rules = "site_silent",
  start = "2026-11-02T08:00:00Z",
  steps = {
    { at = "0s", payload = F .. "device-events--ap-disconnected-const.json", expect = {} },
    { at = "1h", payload = F .. "device-events--ap-connected-const.json", expect = {} },
    { at = "179m", expect = {} },
    { at = "3h", name = "2 hours since the last event", expect = {
      { target = "oncall", title = "No events from site " .. site, action = "trigger",
        dedup_key = "site-silent:" .. site, text = "Last event before the silence: "
                                                   .. "2026-11-02 09:00 UTC" },
    } },
    { at = "6h", name = "silent still: one page", expect = {} },
    { at = "390m", payload = F .. "device-events--sw-disconnected-const.json", expect = {
      { title = "Site " .. site .. " is heard again", action = "resolve" },
    } },
  },
}
