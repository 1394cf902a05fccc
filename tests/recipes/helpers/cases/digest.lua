-- brume.digest: debounce closes 5 minutes after the last item, but no later
-- than 12 minutes after the first; max_items keeps the first ones and the
-- count says how many came; an item function returning nil leaves an event out.
local T0 = 1767225600
local function audit(n, skip) return { topic = "audits", events = { { n = n, skip = skip } } } end

return {
  steps = {
    { at = "0s", payload = audit(1), expect = {} },
    { at = "4m", payload = audit(2), expect = {} },
    { at = "8m", name = "left out", payload = audit(3, true), expect = {} },
    { at = 510, expect = {} },
    { at = "9m", name = "5 minutes after the last item", expect = {
      { key = "all", title = "2 changes", text = "- change 1\n- change 2", at = T0 + 540,
        opened_at = T0, severity = "info" } } },
    { at = "10m", payload = audit(4), expect = {} },
    { at = "14m", payload = audit(5), expect = {} },
    { at = "18m", payload = audit(6), expect = {} },
    { at = "22m", name = "12 minutes after the first: debounce or not", expect = {
      { title = "3 changes", text = "- change 4\n- change 5\n... and 1 more", at = T0 + 1320 } } },
  },
}
