-- brume.absence: each event re-arms the key; it fires once per silence;
-- with resolve = false, coming back sends nothing.
local T0 = 1767225600
local function ping(site, n) return { topic = "ping", events = { { site = site, n = n } } } end

return {
  steps = {
    { at = "0s", payload = { ping("a", 1), ping("b", 2) }, expect = {} },
    { at = "8m", payload = ping("a", 3), expect = {} },
    { at = "10m", name = "b was silent 10 minutes", expect = {
      { action = "trigger", key = "b", since = T0, last = 2 } } },
    { at = "18m", name = "a, 10 minutes after its last event", expect = {
      { action = "trigger", key = "a", since = T0 + 480, last = 3 } } },
    { at = "1h", name = "once per silence", expect = {} },
    { at = "61m", name = "back: no resolve", payload = ping("a", 4), expect = {} },
    { at = "71m", name = "and watched again", expect = { { action = "trigger", key = "a", last = 4 } } },
  },
}
