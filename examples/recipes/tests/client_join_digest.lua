-- client_join_digest.lua: one message per site per 15 minutes.
local F = "../../../tests/fixtures/mist/"

-- Mist's client-join sample (its values are placeholders), for a client
-- MAC at a site.
local function join(site, mac, ssid)
  local p = json.read(F .. "client-join--openapi-schema-example.json")
  local ev = p.events[1]
  ev.site_name, ev.mac, ev.ssid, ev.ap_name, ev.band = site, mac, ssid, "AP-Lobby", "5"
  return p
end

-- A busy site: 30 joins in one body.
local busy = join("Stadium", "020000000001", "Fans")
for i = 2, 30 do -- macs 02:00:00:00:00:01 to 02:00:00:00:00:1e
  local ev = {}
  for k, v in pairs(busy.events[1]) do ev[k] = v end
  ev.mac = ("02%010x"):format(i)
  busy.events[i] = ev
end

-- What its digest says: the first 25 joins, and a count of the rest.
local lines = {}
for i = 1, 25 do
  local mac = ("02%010x"):format(i):gsub("(%x%x)", "%1:"):sub(1, -2)
  lines[i] = ("- %s on Fans via AP-Lobby (5 GHz)"):format(mac)
end
lines[26] = "... and 5 more"

return {
  source = "mist",
  rules = "client_join_digest",
  start = "2026-11-02T08:00:00Z",
  steps = {
    { at = "0s", payload = join("HQ", "5684dae9ac8b", "Corp"), expect = {} },
    { at = "5m", payload = { join("HQ", "5684dae9ac8c", "Guest"),
                             join("Branch", "7fc2936fd243", "Corp") }, expect = {} },
    { at = "15m", name = "HQ's window closes", expect = {
      { target = "facilities", title = "Clients joined at HQ", severity = "info",
        text = "- 56:84:da:e9:ac:8b on Corp via AP-Lobby (5 GHz)\n"
               .. "- 56:84:da:e9:ac:8c on Guest via AP-Lobby (5 GHz)",
        fields = { { "events", "2" }, { "since", "2026-11-02 08:00 UTC" } } },
    } },
    { at = "20m", name = "Branch's window closes", expect = {
      { title = "Clients joined at Branch",
        text = "- 7f:c2:93:6f:d2:43 on Corp via AP-Lobby (5 GHz)" },
    } },
    { at = "21m", payload = busy, expect = {} },
    { at = "36m", name = "a busy site: the first 25 and a count", expect = {
      { title = "Clients joined at Stadium", text = table.concat(lines, "\n"),
        fields = { { "events", "30" } } },
    } },
  },
}
