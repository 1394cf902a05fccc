-- The benchmark's small rule: one short message per alarm.
return {
  topics = "alarms",
  on_event = function(ev, ctx)
    brume.send("secops", { title = "Rogue AP", site = ev.site_id })
  end,
}
