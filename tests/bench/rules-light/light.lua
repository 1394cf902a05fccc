-- The benchmark's light path: reads a few fields of each alarm and encodes a
-- small message, as a rule does before it sends; sends nothing. The nginx+Lua
-- peer in tests/bench/bench.py runs the same function per event.
return {
  topics = "alarms",
  on_event = function(ev, ctx)
    local msg = brume.json.encode({ title = "Rogue AP", site = ev.site_id, type = ev.type,
                                    count = ev.count, org = ev.org_id })
  end,
}
