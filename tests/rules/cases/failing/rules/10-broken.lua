return {
  topics = "alarms",
  on_event = function(ev)
    local site = ev.site.name -- alarms carry site_id, not site: ev.site is nil
  end,
}
