-- ap_flapping.lua: 4 changes within 10 minutes is flapping; 30 quiet
-- minutes end it.
local F = "../../../tests/fixtures/mist/"
local down = F .. "device-events--ap-disconnected-const.json"
local up = F .. "device-events--ap-connected-const.json"

return {
  source = "mist",
  rules = "ap_flapping",
  start = "2026-11-02T08:00:00Z",
  steps = {
    { at = "0s", payload = down, expect = {} },
    { at = "4m", payload = up, expect = {} },
    { at = "11m", name = "the first change is older than 10 minutes", payload = down,
      expect = {} },
    { at = "12m", payload = up, expect = {} },
    { at = "13m", name = "4 changes since 4m", payload = down, expect = {
      { target = "netops", title = "AP 5c5b35000001 is flapping", severity = "warning",
        text = "4 connects and disconnects within 10 minutes" },
    } },
    { at = "14m", name = "still flapping: no second message", payload = up, expect = {} },
    { at = "43m", expect = {} },
    { at = "44m", name = "30 minutes without a change", expect = {
      { title = "AP 5c5b35000001 is steady again", severity = "info",
        fields = { site = "4ac1dcf4-9d8b-7211-65c4-057819f0862b" } },
    } },
  },
}
