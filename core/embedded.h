/*
 * embedded: the Lua files of scripts/, compiled into the binary so brume
 * runs from any folder (the build generates embedded.c from scripts/ with
 * cmake/embed.cmake). A user's scripts folder is searched before these.
 * The console's page is compiled in the same way.
 */
#ifndef BRM_EMBEDDED_H
#define BRM_EMBEDDED_H

#include <stddef.h>

struct brm_embedded {
    const char *name; /* path below scripts/, e.g. "brume/mist.lua" */
    const char *src;
    size_t len;
};

extern const struct brm_embedded brm_embedded_scripts[];
extern const size_t brm_embedded_count;

/* The console's page (console/: index.html, app.js, style.css), generated
 * the same way into console_assets.c. */
extern const struct brm_embedded brm_console_assets[];
extern const size_t brm_console_asset_count;

#endif
