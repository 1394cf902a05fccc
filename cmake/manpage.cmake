# Writes brume's manual page, OUT (gzipped), from the binary BRUME itself:
# its --help, then each command's --help, so the page says what the binary
# says. Run by cmake/package.cmake:
#   cmake -DBRUME=path/to/brume -DVERSION=0.1.0 -DOUT=brume.1.gz -P cmake/manpage.cmake
set(commands run check test sign replay outbox version)

# roff: a backslash is \e; a line starting with . or ' would be a request.
function(help_of out)
  execute_process(COMMAND ${BRUME} ${ARGN} --help OUTPUT_VARIABLE help RESULT_VARIABLE rc)
  if(rc)
    message(FATAL_ERROR "brume ${ARGN} --help failed")
  endif()
  string(REPLACE "\\" "\\e" help "${help}")
  string(REGEX REPLACE "(^|\n)([.'])" "\\1\\\\&\\2" help "${help}")
  set(${out} "${help}" PARENT_SCOPE)
endfunction()

help_of(main)
set(page ".TH BRUME 1 \"\" \"brume ${VERSION}\" \"User Commands\"
.SH NAME
brume \\- Juniper Mist webhooks through Lua rules
.SH SYNOPSIS
.nf
${main}.fi
.SH DESCRIPTION
brume takes the webhooks Juniper Mist posts, checks their signatures,
journals them and hands every event to Lua rules, which send messages
through a durable outbox.
.SH COMMANDS
")
foreach(c ${commands})
  help_of(help ${c})
  string(APPEND page ".SS \"brume ${c}\"\n.nf\n${help}.fi\n")
endforeach()
string(APPEND page ".SH FILES
.TP
.I /etc/brume/brume.lua
the config brume.service runs; its rules are in
.IR /etc/brume/rules ,
its data (journal, outbox, rule state) in
.IR /var/lib/brume .
.TP
.I /etc/brume/env
the secrets brume.service reads (MIST_WEBHOOK_SECRET=...), mode 0600.
.TP
.I /usr/share/brume
the rules and recipes as shipped.
.SH SEE ALSO
.I /usr/share/doc/brume/README.md
")
get_filename_component(dir ${OUT} DIRECTORY)
file(WRITE ${dir}/brume.1 "${page}")
execute_process(COMMAND gzip -9nf ${dir}/brume.1 RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "gzip failed on ${dir}/brume.1")
endif()
