-- zone_forward.lua: each zone or beacon enter and exit as one signed JSON
-- object to the webhook.
local F = "../../../tests/fixtures/mist/"
local zone = "8ac84899-32db-6327-334c-9b6d58544cfe"

return {
  source = "location",
  rules = "zone_forward",
  steps = {
    { at = "0s", payload = F .. "zone--sdk-wifi-asset-postman.json", expect = {
      { target = "locations", raw = { event = "enter", place = "zone", place_id = zone,
                                      who = "de87bf9d-183f-e383-cc68-6ba43947d403",
                                      kind = "sdk", at = 1461220784 },
        request = { url = "https://example.com/****",
                    body = { event = "enter", who = "de87bf9d-183f-e383-cc68-6ba43947d403" } } },
      { raw = { who = "5684dae9ac8b", kind = "wifi" } },
      { raw = { who = "7fc2936fd243", kind = "asset" } },
    } },
    { at = "1m", name = "a beacon: enter then exit of the same client, both sent",
      payload = F .. "vbeacon--synthesized-from-zone.json", expect = {
        { raw = { event = "enter", place = "vbeacon",
                  place_id = "3d8f2a0c-5b1e-4f6a-9c2d-7e4b1a9f0c11" } },
        { raw = { event = "exit", place = "vbeacon", at = 1461220844 } },
    } },
    { at = "2m", payload = F .. "zone--openapi-asset.json", expect = {
      { raw = { event = "enter", who = "b4695157-0d1d-4da0-8f9e-5c53149389e4", kind = "asset" } },
    } },
  },
}
