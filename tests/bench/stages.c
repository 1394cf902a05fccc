/*
 * Where brume's time goes, stage by stage, on one core and without the
 * network: the signature, the decode, and the rule run with a rule that does
 * nothing, one that sends a small message, and the shipped rules. Reported
 * per 10-event body by tests/bench/run.sh.
 *
 *     bench_stages BODY.json RULES_DIR...
 */
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include "engine.h"
#include "intake.h"
#include "json.h"
#include "verify.h"

#define ROUNDS 20000

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench_stages BODY.json RULES_DIR...\n");
        return 2;
    }
    struct brm_buf body;
    brm_buf_init(&body);
    if (brm_read_file(argv[1], 1 << 24, &body) < 0) return 1;
    struct brm_verify_key *k = brm_verify_key_new(BRM_VERIFY_SHA256, "secret", 6);
    static const char sig[] = "0000000000000000000000000000000000000000000000000000000000000000";
    double t0 = now();
    for (int i = 0; i < ROUNDS; i++) brm_verify_signature(k, sig, 64, body.data, body.len);
    printf("signature (HMAC-SHA256 of %zu bytes)  %7.2f us\n", body.len,
           (now() - t0) / ROUNDS * 1e6);
    brm_verify_key_free(k);
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
        struct brm_config *cfg = brm_config_load(path, &errs);
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
            t0 = now();
            for (int i = 0; i < ROUNDS; i++) {
                brm_json_envelope(L, body.data, body.len, &env, &err);
                lua_pop(L, 1);
            }
            printf("decode (json.c, envelope)              %7.2f us\n",
                   (now() - t0) / ROUNDS * 1e6);
        }
        t0 = now();
        for (int i = 0; i < ROUNDS; i++) {
            struct brm_actions a = { 0 };
            struct brm_batch b = { "m", 1, 1.0, 0 };
            brm_intake_run(e, body.data, body.len, &b, &a, NULL, NULL, &err);
            brm_actions_reset(&a);
        }
        printf("decode + rules of %-20s %7.2f us\n",
               strrchr(argv[r], '/') ? strrchr(argv[r], '/') + 1 : argv[r],
               (now() - t0) / ROUNDS * 1e6);
        brm_engine_free(e);
        brm_config_free(cfg);
    }
    brm_buf_reset(&body);
    return 0;
}
