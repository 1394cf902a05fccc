-- audit_teams.lua: a configuration change, with what changed, to Teams.
local F = "../../../tests/fixtures/mist/"

return {
  source = "mist",
  rules = "audit_teams",
  steps = {
    { at = "0s", payload = F .. "audits--update-site-settings-delivery-log.json", expect = {
      { target = "netops", title = "Test Site: Update Site Settings", severity = "info",
        text = "radio_config.band_24.power: null -> 10\n"
               .. "radio_config.band_24.power_max: 18 -> null\n"
               .. "radio_config.band_24.power_min: 8 -> null\n"
               .. "radio_config.band_24.preamble: long -> short",
        fields = { { "by", "John Doe john.doe@juniper.net" }, { "from", "1.2.3.4" },
                   { "at", "2023-06-05T09:16:16Z" } } },
    } },
    { at = "1m", name = "an audit without before and after",
      payload = F .. "audits--openapi-schema-example.json", expect = {
        { target = "netops", text = "No settings changed." },
    } },
  },
}
