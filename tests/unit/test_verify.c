/* verify: Mist's signature test vector and the ways a signature can be wrong. */
#include "test.h"
#include "verify.h"
#include "util.h"

/* The ping fixture written without spaces, as Mist sends it. */
static const char ping[] =
    "{\"topic\":\"ping\",\"events\":[{\"id\":\"6b0b5d05-430a-4414-86ca-eb081aff03e8\","
    "\"name\":\"webhook event delivery test\",\"site_id\":\"21134243-0667-44ae-8f58-"
    "42b640ad39bb\",\"timestamp\":1685985159.0102212}]}";
static const char ping_sig[] = "729193ef29300de1b3064b996a763a91d56bfbd05af0ca54a80e9401feaa266d";

static int verify(struct brm_verify_key *k, const char *hex, const char *body) {
    return brm_verify_signature(k, hex, strlen(hex), body, strlen(body));
}

int main(void) {
    struct brm_verify_key *k = brm_verify_key_new(BRM_VERIFY_SHA256, "secret", 6);
    char upper[sizeof(ping_sig)], wrong[sizeof(ping_sig)];

    CHECK(verify(k, ping_sig, ping));
    /* The key is reused: a second MAC must not carry state from the first. */
    CHECK(verify(k, ping_sig, ping));
    for (size_t i = 0; i < sizeof(ping_sig); i++)
        upper[i] =
            (char)(ping_sig[i] >= 'a' && ping_sig[i] <= 'f' ? ping_sig[i] - 32 : ping_sig[i]);
    CHECK(verify(k, upper, ping)); /* hex is case-insensitive: same bits */
    memcpy(wrong, ping_sig, sizeof(ping_sig));
    wrong[63] = wrong[63] == '0' ? '1' : '0';
    CHECK(!verify(k, wrong, ping));
    wrong[63] = ping_sig[63];
    wrong[0] = 'g'; /* not hex */
    CHECK(!verify(k, wrong, ping));
    CHECK(!verify(k, "729193ef", ping));                               /* short */
    CHECK(!verify(k, "", ping));                                       /* empty */
    CHECK(!brm_verify_signature(k, ping_sig, 63, ping, strlen(ping))); /* one digit short */
    CHECK(!verify(k, ping_sig, "{\"topic\":\"ping\",\"events\":[]}")); /* other body */
    char longer[80];
    snprintf(longer, sizeof(longer), "%s00", ping_sig);
    CHECK(!verify(k, longer, ping));

    /* An empty body has a signature too: HMAC-SHA256("secret", ""). */
    CHECK(verify(k, "f9e66e179b6747ae54108f82f8ade8b3c25d76fd30afde6c395822c530196169", ""));

    /* Another secret does not verify the vector. */
    struct brm_verify_key *other = brm_verify_key_new(BRM_VERIFY_SHA256, "secreT", 6);
    CHECK(!verify(other, ping_sig, ping));
    brm_verify_key_free(other);

    /* The legacy header: HMAC-SHA1 as 40 hex digits. */
    struct brm_verify_key *k1 = brm_verify_key_new(BRM_VERIFY_SHA1, "secret", 6);
    unsigned char mac[BRM_VERIFY_MAX_MAC];
    char hex[2 * BRM_VERIFY_MAX_MAC + 1];
    size_t n = brm_verify_hmac(BRM_VERIFY_SHA1, "secret", 6, ping, strlen(ping), mac);
    CHECK_INT(n, 20);
    brm_hex_encode(mac, n, hex);
    CHECK(verify(k1, hex, ping));
    CHECK(!verify(k1, ping_sig, ping)); /* a v2 value is not a v1 value */
    CHECK(!verify(k, hex, ping));
    brm_verify_key_free(k1);

    /* The one-shot MAC agrees with the prepared key. */
    n = brm_verify_hmac(BRM_VERIFY_SHA256, "secret", 6, ping, strlen(ping), mac);
    brm_hex_encode(mac, n, hex);
    CHECK_STR(hex, ping_sig);
    /* RFC 4231 test case 2. */
    n = brm_verify_hmac(BRM_VERIFY_SHA256, "Jefe", 4, "what do ya want for nothing?", 28, mac);
    brm_hex_encode(mac, n, hex);
    CHECK_STR(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");

    brm_verify_key_free(k);
    brm_verify_key_free(NULL);
    return test_done();
}
