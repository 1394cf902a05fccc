-- ap_flapping.lua: 4 changes within 10 minutes is flapping; 30 quiet
-- minutes end it.
local F = "../../../tests/fixtures/mist/"
local start = 1793606400 -- 2026-11-02T08:00:00Z

-- The sample AP event, stamped MINUTES after the start, as Mist's would be
-- (the same event twice within the source's dedupe window is a duplicate).
local function ap(kind, minutes)
  local body = json.read(F .. "device-events--ap-" .. kind .. "-const.json")
  body.events[1].timestamp = start + minutes * 60
  return body
end

return {
  source = "mist",
  rules = "ap_flapping",
  start = "2026-11-02T08:00:00Z",
  steps = {
    { at = "0s", payload = ap("disconnected", 0), expect = {} },
    { at = "4m", payload = ap("connected", 4), expect = {} },
    { at = "11m", name = "the first change is older than 10 minutes",
      payload = ap("disconnected", 11), expect = {} },
    { at = "12m", payload = ap("connected", 12), expect = {} },
    { at = "13m", name = "4 changes since 4m", payload = ap("disconnected", 13), expect = {
      { target = "netops", title = "AP 5c5b35000001 is flapping", severity = "warning",
        text = "4 connects and disconnects within 10 minutes" },
    } },
    { at = "14m", name = "still flapping: no second message", payload = ap("connected", 14),
      expect = {} },
    { at = "43m", expect = {} },
    { at = "44m", name = "30 minutes without a change", expect = {
      { title = "AP 5c5b35000001 is steady again", severity = "info",
        fields = { site = "4ac1dcf4-9d8b-7211-65c4-057819f0862b" } },
    } },
  },
}
