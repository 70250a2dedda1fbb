# shellcheck shell=sh
# dotenv.sh: sourced by render.sh and secret-file.sh (POSIX sh, busybox too).
#
# ray_llm_dotenv_each FILE CALLBACK: calls `CALLBACK KEY VALUE` for every
# KEY=VALUE line of a dotenv file, with scripts/lib.sh's rules: values are
# literal; one pair of surrounding quotes is removed; an unquoted value ends at
# " #" (an inline comment); `export ` in front is allowed.
ray_llm_dotenv_each() {
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line#"${line%%[![:space:]]*}"}
        case $line in
            export[[:space:]]*) line=${line#export}; line=${line#"${line%%[![:space:]]*}"} ;;
        esac
        key=${line%%=*}
        [ "$key" != "$line" ] || continue
        case $key in
            '' | *[!A-Za-z0-9_]* | [0-9]*) continue ;;
        esac
        value=${line#*=}
        trimmed=${value%"${value##*[![:space:]]}"}
        case $trimmed in
            \"*\") value=${trimmed#\"}; value=${value%\"} ;;
            \'*\') value=${trimmed#\'}; value=${value%\'} ;;
            *)
                value=${value%%[[:space:]]#*}
                value=${value%"${value##*[![:space:]]}"}
                ;;
        esac
        "$2" "$key" "$value"
    done <"$1"
    unset line key value trimmed
}
