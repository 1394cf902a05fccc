-- brume.holddown: the wait counts from the first down; anything but down
-- clears it; two rules on the same keys keep their state apart.
local T0 = 1767225600 -- the default start, 2026-01-01T00:00:00Z
local function ev(type, n, ap)
  return { topic = "device-updowns", events = { { type = type, n = n, ap = ap or "ap1" } } }
end

return {
  rules = { "hold_plain", "hold_twin" },
  steps = {
    { at = "0s", payload = ev("down", 1), expect = {} },
    { at = "30s", name = "down again: the wait still counts from 0s", payload = ev("down", 2),
      expect = {} },
    { at = "1m", name = "hold_twin raises", expect = {
      { rule = "hold_twin", action = "trigger", key = "ap1" } } },
    { at = "2m", name = "up: hold_twin resolves, hold_plain was only waiting",
      payload = ev("up", 3), expect = { { rule = "hold_twin", action = "resolve" } } },
    { at = "10m", expect = {} },
    { at = "11m", payload = { ev("down", 4), ev("down", 5, "ap2") }, expect = {} },
    { at = "12m", name = "hold_twin raises both", expect = {
      { rule = "hold_twin", key = "ap1" }, { rule = "hold_twin", key = "ap2" } } },
    { at = "16m", name = "hold_plain: the down event it kept, at its due time", expect = {
      { rule = "hold_plain", action = "trigger", key = "ap1", seen = 4, since = T0 + 660,
        at = T0 + 960 },
      { rule = "hold_plain", action = "trigger", key = "ap2", seen = 5 } } },
    { at = "17m", name = "an event that is not down is up (no up function)",
      payload = ev("rebooted", 6), expect = {
        { rule = "hold_plain", action = "resolve", key = "ap1", seen = 6, since = T0 + 660,
          at = T0 + 1020 } } },
  },
}
