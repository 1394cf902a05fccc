/*
 * Where brume's time goes, stage by stage, on one core and without the
 * network: the signature, the writer's packing of the body, the decode,
 * and the rule run with each folder of rules given (tests/bench/run.sh
 * gives a rule that does nothing, the light path, one that sends a small
 * message, and the shipped rules). Each stage runs for about
 * STAGE_SECONDS; reported per body, per 10-event body by tests/bench/run.sh.
 *
 *     bench_stages BODY.json RULES_DIR...
 *
 * BRUME_STAGES_ROUNDS=N (N > 0) runs each stage N times instead, whatever
 * that takes: instruction counts that move far less with the machine's
 * load, as in `valgrind --tool=callgrind --toggle-collect=brm_intake_run
 * bench_stages BODY RULES_DIR` (N bodies' decode and rules).
 */
#include <lua.h>
#include <lz4.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include "engine.h"
#include "intake.h"
#include "json.h"
#include "verify.h"

#define STAGE_SECONDS 0.5
#define BATCH         50 /* rounds between two looks at the clock */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* One body through intake: decode, then the rules of E on each event. */
static void run_rules(struct brm_engine *e, const struct brm_buf *body, struct brm_err *err) {
    struct brm_actions a = { 0 };
    struct brm_batch b = { "m", 1, 1.0, 0, NULL, 0 };
    brm_intake_run(e, body->data, body->len, &b, &a, NULL, NULL, err);
    brm_actions_reset(&a);
}

static long fixed_rounds; /* BRUME_STAGES_ROUNDS, or 0 */

/* Runs STMT in batches until STAGE_SECONDS have passed (or fixed_rounds
 * times); sets PER to the seconds of one round. */
#define STAGE(per, stmt)                                                                           \
    do {                                                                                           \
        long rounds_ = 0;                                                                          \
        double t0_ = now(), t_;                                                                    \
        do {                                                                                       \
            long batch_ = fixed_rounds ? fixed_rounds : BATCH;                                     \
            for (long i_ = 0; i_ < batch_; i_++) {                                                 \
                stmt;                                                                              \
            }                                                                                      \
            rounds_ += batch_;                                                                     \
        } while ((t_ = now()) - t0_ < STAGE_SECONDS && !fixed_rounds);                             \
        (per) = (t_ - t0_) / (double)rounds_;                                                      \
    } while (0)

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench_stages BODY.json RULES_DIR...\n");
        return 2;
    }
    const char *rounds = getenv("BRUME_STAGES_ROUNDS");
    fixed_rounds = rounds && atol(rounds) > 0 ? atol(rounds) : 0;
    struct brm_buf body;
    brm_buf_init(&body);
    if (brm_read_file(argv[1], 1 << 24, &body) < 0) return 1;
    struct brm_verify_key *k = brm_verify_key_new(BRM_VERIFY_SHA256, "secret", 6);
    static const char sig[] = "0000000000000000000000000000000000000000000000000000000000000000";
    double per;
    STAGE(per, brm_verify_signature(k, sig, 64, body.data, body.len));
    printf("signature (HMAC-SHA256 of %zu bytes)  %7.2f us\n", body.len, per * 1e6);
    brm_verify_key_free(k);
    /* What the writer does to the body before storing it (store.c packs a
     * body when that saves a quarter of it). */
    int room = (int)(body.len - (body.len + 3) / 4), packed = 0;
    char *out = brm_xmalloc((size_t)room + 1);
    STAGE(per, packed = LZ4_compress_default(body.data, out, (int)body.len, room));
    free(out);
    if (packed > 0)
        printf("journal packing (LZ4 to %d bytes)      %7.2f us\n", packed, per * 1e6);
    else
        printf("journal packing (does not pack: stored as it came)  %7.2f us\n", per * 1e6);
    for (int r = 2; r < argc; r++) {
        char cfgtext[512], path[] = "/tmp/brume-stages-XXXXXX";
        int fd = mkstemp(path);
        int n = snprintf(cfgtext, sizeof(cfgtext),
                         "sources = { m = { path = '/m', secret = 's' } }\n"
                         "targets = { secops = { kind = 'file', path = '/dev/null' } }\n"
                         "rules = '%s'\n",
                         argv[r]);
        if (fd < 0 || write(fd, cfgtext, (size_t)n) != n) return 1;
        close(fd);
        struct brm_errors errs = { 0 };
        struct brm_config *cfg = brm_config_load(path, brm_api_open_for_config, NULL, &errs);
        struct brm_engine *e = cfg ? brm_engine_new(cfg, &errs) : NULL;
        unlink(path);
        if (!e) {
            fprintf(stderr, "bench_stages: cannot load %s\n", argv[r]);
            return 1;
        }
        struct brm_err err;
        if (r == 2) {
            struct brm_envelope env;
            lua_State *L = brm_engine_state(e);
            STAGE(per, brm_json_envelope(L, body.data, body.len, &env, &err); lua_pop(L, 1));
            printf("decode (json.c, envelope)              %7.2f us\n", per * 1e6);
        }
        STAGE(per, run_rules(e, &body, &err));
        printf("decode + rules of %-20s %7.2f us\n",
               strrchr(argv[r], '/') ? strrchr(argv[r], '/') + 1 : argv[r], per * 1e6);
        brm_engine_free(e);
        brm_config_free(cfg);
    }
    brm_buf_reset(&body);
    return 0;
}
