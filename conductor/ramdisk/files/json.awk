# Flatten a JSON document (stdin) into lines "path<TAB>value" for the agent.
#   {"command": {"id": "c1", "params": {"disks": ["a", "b"]}}}
# gives
#   command.id	c1
#   command.params.disks.0	a
#   command.params.disks.1	b
# Strings are unescaped (\uXXXX outside ASCII becomes "?"; newlines become
# spaces so every value stays on one line); numbers, true, false and null
# are printed as written. Objects and arrays print nothing themselves,
# unless empty: then "{}" or "[]", so that their key is still seen.
BEGIN { RS = "\001" }
{ doc = doc $0 }
END {
    pos = 1; n = length(doc)
    value("")
}
function skip_ws() {
    while (pos <= n && index(" \t\r\n", substr(doc, pos, 1)) > 0) pos++
}
function join(path, key) {
    return path == "" ? key : path "." key
}
function value(path,    c, key, i) {
    skip_ws()
    c = substr(doc, pos, 1)
    if (c == "{") {
        pos++; skip_ws()
        if (substr(doc, pos, 1) == "}") { pos++; print path "\t{}"; return }
        while (pos <= n) {
            skip_ws(); key = string(); skip_ws()
            pos++  # the colon
            value(join(path, key)); skip_ws()
            c = substr(doc, pos, 1); pos++
            if (c != ",") return
        }
    } else if (c == "[") {
        pos++; skip_ws()
        if (substr(doc, pos, 1) == "]") { pos++; print path "\t[]"; return }
        for (i = 0; pos <= n; i++) {
            value(join(path, i)); skip_ws()
            c = substr(doc, pos, 1); pos++
            if (c != ",") return
        }
    } else if (c == "\"") {
        print path "\t" string()
    } else if (match(substr(doc, pos), /^[-+0-9.eEa-z]+/)) {
        print path "\t" substr(doc, pos, RLENGTH)
        pos += RLENGTH
    } else {
        pos++  # not JSON: step over it rather than loop for ever
    }
}
function string(    out, c, e, code) {
    pos++  # the opening quote
    out = ""
    while (pos <= n) {
        if (match(substr(doc, pos), /^[^"\\]+/)) {
            out = out substr(doc, pos, RLENGTH); pos += RLENGTH
            continue
        }
        c = substr(doc, pos, 1)
        if (c == "\"") { pos++; break }
        e = substr(doc, pos + 1, 1)
        pos += 2
        if (e == "n" || e == "r" || e == "t") out = out " "
        else if (e == "b" || e == "f") out = out ""
        else if (e == "u") {
            code = substr(doc, pos, 4); pos += 4
            out = out (code ~ /^00[2-7][0-9a-fA-F]$/ ? sprintf("%c", hex(code)) : "?")
        } else out = out e
    }
    gsub(/\n/, " ", out)
    return out
}
function hex(s,    i, v) {
    v = 0
    for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", tolower(substr(s, i, 1))) - 1
    return v
}
