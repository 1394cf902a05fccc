-- brume.flap: 3 changes within any 5 minutes; one trigger while it lasts;
-- over 10 quiet minutes after the last change; it can start again.
local function change(n) return { topic = "device-events", events = { { ap = "ap1", n = n } } } end

return {
  steps = {
    { at = "0s", payload = change(1), expect = {} },
    { at = "3m", payload = change(2), expect = {} },
    { at = "6m", name = "the first is older than 5 minutes", payload = change(3), expect = {} },
    { at = "7m", payload = change(4), expect = {
      { action = "trigger", key = "ap1", changes = 3, last = 4 } } },
    { at = "8m", payload = change(5), expect = {} },
    { at = "17m", expect = {} },
    { at = "18m", name = "10 minutes since the last change", expect = {
      { action = "resolve", key = "ap1", last = 5 } } },
    { at = "30m", payload = { change(6), change(7), change(8) }, expect = {
      { action = "trigger", changes = 3, last = 8 } } },
  },
}
