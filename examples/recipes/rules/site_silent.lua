-- A site that has sent no device event for 2 hours: a PagerDuty warning
-- (a site cut off from Mist cannot say so itself), resolved when the site
-- is heard again.
--
-- brume.absence arms a timer per site with each of its device events; the
-- timer only fires when nothing re-armed it for `within`. Use a window
-- longer than the site's quietest hours: a small office may well be silent
-- at night.
local mist = require "brume.mist"

return require "brume.absence" {
  topics = "device-events",
  key = function(ev) return ev.site_id end,
  within = "2h",
  keep = function(ev) return { site_id = ev.site_id, site_name = ev.site_name } end,
  send = function(ev, action, ctx)
    brume.send("oncall", {
      title = action == "trigger" and ("No events from site %s"):format(mist.site(ev))
                                  or ("Site %s is heard again"):format(mist.site(ev)),
      text = ("Last event before the silence: %s"):format(os.date("!%Y-%m-%d %H:%M UTC",
                                                                  math.floor(ctx.since))),
      severity = "warning",
      dedup_key = "site-silent:" .. ctx.key,
      action = action,
    })
  end,
}
