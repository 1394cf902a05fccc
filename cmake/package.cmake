# brume's Debian package (./build.sh deb: a tree configured with
# -DBRUME_DEB=ON, then cpack -G DEB): brume_<version>_<arch>.deb with
#
#   /usr/bin/brume
#   /etc/brume/brume.lua           examples/brume.lua with the paths of an
#                                  installed brume (a conffile)
#   /etc/brume/rules/              the shipped rules, the ones the config runs
#                                  (conffiles: edits survive upgrades)
#   /usr/share/brume/rules/        the shipped rules as shipped, to compare
#   /usr/share/brume/recipes/      examples/recipes/, whatever it holds
#   /usr/share/brume/deploy/       deploy/: scale-out behind haproxy (brume@.service,
#                                  haproxy.cfg, redis.conf, the instances' config)
#   /lib/systemd/system/brume.service   examples/brume.service for /usr/bin;
#                                  the postinst enables it, never starts it
#   /usr/share/doc/brume/          README.md, the other example configs,
#                                  copyright, changelog.gz
#   /usr/share/man/man1/brume.1.gz from the binary's --help texts
#
# Depends are what dpkg-shlibdeps finds the binary needs. The maintainer
# scripts, copyright and changelog are in packaging/deb/.
set(DEB_SRC ${CMAKE_SOURCE_DIR}/packaging/deb)
set(DEB_OUT ${CMAKE_BINARY_DIR}/deb)
set(BRUME_DEB_MAINTAINER "brume maintainers <brume@example.org>"
    CACHE STRING "The Maintainer of the Debian package (./build.sh deb takes DEBEMAIL)")
file(MAKE_DIRECTORY ${DEB_OUT})
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${DEB_SRC}/changelog
             ${CMAKE_SOURCE_DIR}/examples/brume.lua ${CMAKE_SOURCE_DIR}/examples/brume.service)

# The changelog's newest entry is this version: a release updates both.
file(STRINGS ${DEB_SRC}/changelog newest LIMIT_COUNT 1)
if(NOT newest MATCHES "^brume \\(${PROJECT_VERSION}\\) ")
  message(FATAL_ERROR "packaging/deb/changelog begins with '${newest}': add an entry for "
                      "brume ${PROJECT_VERSION}, the version CMakeLists.txt gives")
endif()
execute_process(COMMAND gzip -9nc ${DEB_SRC}/changelog OUTPUT_FILE ${DEB_OUT}/changelog.gz
                RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "gzip failed on packaging/deb/changelog")
endif()

# Writes IN's text to OUT with each FROM replaced by the TO after it
# (pairs of arguments); stops the build when IN no longer holds a FROM, so
# a change to the example cannot slip past what the package makes of it.
function(brume_rewrite in out)
  file(READ ${in} text)
  set(args ${ARGN})
  while(args)
    list(POP_FRONT args from to)
    string(FIND "${text}" "${from}" at)
    if(at EQUAL -1)
      message(FATAL_ERROR "${in} no longer holds '${from}': cmake/package.cmake turns it "
                          "into the installed file; say there what it should become")
    endif()
    string(REPLACE "${from}" "${to}" text "${text}")
  endwhile()
  file(WRITE ${out} "${text}")
endfunction()

# The config, as installed: its data in the unit's StateDirectory, its
# rules and scripts beside it in /etc/brume.
brume_rewrite(${CMAKE_SOURCE_DIR}/examples/brume.lua ${DEB_OUT}/brume.lua
  "-- Start it with:   brume run -c examples/brume.lua"
  "-- Installed as /etc/brume/brume.lua by brume's Debian package: brume.service
-- runs it, with MIST_WEBHOOK_SECRET from /etc/brume/env (see README.md in
-- /usr/share/doc/brume). The shipped rules and recipes are in /usr/share/brume."
  "data_dir = \"../var\"" "data_dir = \"/var/lib/brume\"        -- brume.service's StateDirectory"
  "\"../rules\"  " "\"rules\"     "
  "\"../scripts\"  " "\"scripts\"     "
  "\"../var/alerts.jsonl\"" "\"/var/lib/brume/alerts.jsonl\"")
file(READ ${DEB_OUT}/brume.lua text)
if(text MATCHES "\"\\.\\./")
  message(FATAL_ERROR "examples/brume.lua has a path out of its folder that the package does "
                      "not place: add it to cmake/package.cmake")
endif()

# The unit, for /usr/bin; its header tells what the package did.
file(READ ${CMAKE_SOURCE_DIR}/examples/brume.service unit)
string(FIND "${unit}" "[Unit]" at)
string(SUBSTRING "${unit}" ${at} -1 unit)
file(WRITE ${DEB_OUT}/brume.service.in
  "# brume as a systemd service, from brume's Debian package, which enabled it
# and did not start it. Put the webhook secret in /etc/brume/env
# (MIST_WEBHOOK_SECRET=..., mode 0600), then: systemctl start brume.
# The config is /etc/brume/brume.lua, the data /var/lib/brume. Change the
# settings below with `systemctl edit brume`, not in this file.
${unit}")
brume_rewrite(${DEB_OUT}/brume.service.in ${DEB_OUT}/brume.service
  "/usr/local/bin/brume" "/usr/bin/brume"
  "file:///usr/local/share/doc/brume/" "file:///usr/share/doc/brume/")

# brume(1), made from what the binary says of itself.
add_custom_command(OUTPUT ${DEB_OUT}/brume.1.gz
  COMMAND ${CMAKE_COMMAND} -DBRUME=$<TARGET_FILE:brume> -DVERSION=${PROJECT_VERSION}
          -DOUT=${DEB_OUT}/brume.1.gz
          -P ${CMAKE_SOURCE_DIR}/cmake/manpage.cmake
  DEPENDS brume ${CMAKE_SOURCE_DIR}/cmake/manpage.cmake
  COMMENT "Writing brume(1)")
add_custom_target(brume_manpage ALL DEPENDS ${DEB_OUT}/brume.1.gz)
install(FILES ${DEB_OUT}/brume.1.gz DESTINATION share/man/man1)

install(FILES ${DEB_OUT}/brume.lua DESTINATION /etc/brume)
install(DIRECTORY ${CMAKE_SOURCE_DIR}/rules/ DESTINATION /etc/brume/rules)
install(DIRECTORY ${CMAKE_SOURCE_DIR}/rules/ DESTINATION share/brume/rules)
if(IS_DIRECTORY ${CMAKE_SOURCE_DIR}/examples/recipes)
  install(DIRECTORY ${CMAKE_SOURCE_DIR}/examples/recipes/ DESTINATION share/brume/recipes)
endif()
install(DIRECTORY ${CMAKE_SOURCE_DIR}/deploy/ DESTINATION share/brume/deploy)
file(GLOB examples CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/examples/*.lua)
list(REMOVE_ITEM examples ${CMAKE_SOURCE_DIR}/examples/brume.lua)
install(FILES ${examples} DESTINATION share/doc/brume/examples)
install(FILES ${DEB_OUT}/brume.service DESTINATION /lib/systemd/system)
install(FILES ${DEB_SRC}/copyright ${DEB_OUT}/changelog.gz DESTINATION share/doc/brume)

# Every file under /etc is a conffile.
file(GLOB_RECURSE rules RELATIVE ${CMAKE_SOURCE_DIR}/rules CONFIGURE_DEPENDS
     ${CMAKE_SOURCE_DIR}/rules/*)
set(conffiles "/etc/brume/brume.lua\n")
foreach(r ${rules})
  string(APPEND conffiles "/etc/brume/rules/${r}\n")
endforeach()
file(WRITE ${DEB_OUT}/conffiles "${conffiles}")

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME brume)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_PACKAGE_CONTACT ${BRUME_DEB_MAINTAINER})
set(CPACK_DEBIAN_PACKAGE_MAINTAINER ${BRUME_DEB_MAINTAINER})
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${DEB_OUT}/conffiles ${DEB_SRC}/postinst ${DEB_SRC}/prerm
    ${DEB_SRC}/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_INSTALL_DEFAULT_DIRECTORY_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ
    GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
set(CPACK_STRIP_FILES ON)
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "Juniper Mist webhooks through Lua rules")
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION "brume takes the webhooks Juniper Mist posts (alarms, audits, device events,
up/downs, client joins, locations, ...), checks their signatures, journals
them in SQLite and hands every event to Lua 5.4 rules, which send messages
to chat, paging, ticketing and webhook targets through a durable outbox.

brume.service is enabled, not started: put the webhook secret in
/etc/brume/env, then start it.")
include(CPack)
