-- rogue_ap.lua: each BSSID once a day, whichever alarm reports it.
local F = "../../../tests/fixtures/mist/"
local rogue = F .. "alarms--rogue-ap-const-alarm-defs.json"

-- The same alarm again later, with one BSSID already reported and one new.
local mixed = json.read(rogue)
mixed.events[1].id = "9e0c7a5e-0000-4000-8000-000000000001"
mixed.events[1].bssids = { "ca3a6bef7457", "aabbccddeeff" }

return {
  source = "mist",
  rules = "rogue_ap",
  start = "2026-11-02T08:00:00Z",
  steps = {
    { at = "0s", payload = rogue, expect = {
      { target = "secops", title = "Rogue APs at f688779c-e335-4f88-8d7c-9c5e9964528b",
        text = "New today: ca:3a:6b:ef:74:57, d2:14:3d:42:6f:d4. SSIDs heard: "
               .. "DIRECT-roku-371-0064B1, DIRECT-wa-BRAVIA.",
        severity = "warning",
        fields = { { "heard by", "5c5b35500442" }, { "first seen", "2021-08-25T03:42:48Z" } },
        request = { url = "https://hooks.slack.com/****" } },
    } },
    { at = "1h", name = "the same alarm again: reported today", payload = rogue, expect = {} },
    { at = "2h", name = "an old-style alarm with eight other BSSIDs",
      payload = F .. "alarms--rogue-ap-detected-juniper-doc.json", expect = {
        { title = "Rogue APs at 4ac1dcf4-9d8b-7211-xxxx-xxxxxxxxxxxx",
          text = "New today: 00024axxxxxx, 5c5b3xxxxxx, 000f2xxxxxx, c03f0exxxxxx, e091f5xxxxxx, "
                 .. "e894f6xxxxxx, 40169fxxxxxx, 5c5b35xxxxxx. SSIDs heard: qwerty, A-Dot, "
                 .. "xfinity, alpha." },
    } },
    { at = "3h", name = "only the new BSSID", payload = mixed, expect = {
      { title = "Rogue AP at f688779c-e335-4f88-8d7c-9c5e9964528b",
        text = "New today: aa:bb:cc:dd:ee:ff. SSIDs heard: DIRECT-roku-371-0064B1, "
               .. "DIRECT-wa-BRAVIA." },
    } },
    { at = "24h", name = "a day later: reported again", payload = rogue, expect = {
      { title = "Rogue APs at f688779c-e335-4f88-8d7c-9c5e9964528b" },
    } },
  },
}
