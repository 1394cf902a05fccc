-- Client joins, one digest per site every 15 minutes (to Slack).
--
-- A client-join event per client is far too many messages for a channel;
-- a digest per site says who joined, on which SSID and AP. brume.digest
-- stores each join as a row of its own and sends one message when the
-- site's window closes (15 minutes after its first join). A busy site
-- keeps its first 25 joins and counts the rest ("... and 212 more").
local mist = require "brume.mist"

return require "brume.digest" {
  topics = "client-join",
  key = function(ev) return mist.site(ev) end,
  window = "15m",
  max_items = 25,
  item = function(ev)
    return { mac = mist.mac(ev.mac), ssid = ev.ssid, ap = ev.ap_name or ev.ap, band = ev.band }
  end,
  target = "facilities",
  title = "Clients joined at %s",
  line = function(it) return ("%s on %s via %s (%s GHz)"):format(it.mac, it.ssid, it.ap, it.band) end,
}
