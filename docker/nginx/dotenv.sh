# shellcheck shell=sh
# dotenv.sh: the one shell parser of .env and .secrets (POSIX sh, busybox
# too). Sourced by render.sh and secret-file.sh (the Nginx image) and by
# scripts/lib.sh (bash: load_env_files, host scripts and the main image).
# tests/unit/test_dotenv_shell.py checks it against python-dotenv, the
# Python side's parser.
#
# ray_llm_dotenv_each FILE CALLBACK: calls `CALLBACK KEY VALUE` for every
# KEY=VALUE line of a dotenv file: values are literal and lose leading
# blanks; a quoted value is what lies between its quotes (a comment may
# follow); an unquoted value ends at " #" (an inline comment) and loses its
# trailing blanks; `export ` in front is allowed;
# KEY is [A-Za-z_][A-Za-z0-9_]*, other lines are skipped. Its variables are
# prefixed (sh has no `local`), so a caller's own variables stay untouched.
ray_llm_dotenv_each() {
    while IFS= read -r ray_llm_dotenv_line || [ -n "$ray_llm_dotenv_line" ]; do
        ray_llm_dotenv_line=${ray_llm_dotenv_line#"${ray_llm_dotenv_line%%[![:space:]]*}"}
        case $ray_llm_dotenv_line in
            export[[:space:]]*)
                ray_llm_dotenv_line=${ray_llm_dotenv_line#export}
                ray_llm_dotenv_line=${ray_llm_dotenv_line#"${ray_llm_dotenv_line%%[![:space:]]*}"}
                ;;
        esac
        ray_llm_dotenv_key=${ray_llm_dotenv_line%%=*}
        [ "$ray_llm_dotenv_key" != "$ray_llm_dotenv_line" ] || continue
        case $ray_llm_dotenv_key in
            '' | *[!A-Za-z0-9_]* | [0-9]*) continue ;;
        esac
        ray_llm_dotenv_value=${ray_llm_dotenv_line#*=}
        ray_llm_dotenv_value=${ray_llm_dotenv_value#"${ray_llm_dotenv_value%%[![:space:]]*}"}
        # A quoted value: what lies between its quotes, when only blanks or a
        # comment follow the closing one ('KEY="x" # note').
        ray_llm_dotenv_quote=
        case $ray_llm_dotenv_value in
            \"*\"* ) ray_llm_dotenv_quote=\" ;;
            \'*\'* ) ray_llm_dotenv_quote=\' ;;
        esac
        if [ -n "$ray_llm_dotenv_quote" ]; then
            ray_llm_dotenv_trimmed=${ray_llm_dotenv_value#?}
            ray_llm_dotenv_after=${ray_llm_dotenv_trimmed#*"$ray_llm_dotenv_quote"}
            ray_llm_dotenv_after=${ray_llm_dotenv_after#"${ray_llm_dotenv_after%%[![:space:]]*}"}
            case $ray_llm_dotenv_after in
                '' | '#'*) ray_llm_dotenv_value=${ray_llm_dotenv_trimmed%%"$ray_llm_dotenv_quote"*} ;;
                *) ray_llm_dotenv_quote= ;;
            esac
        fi
        if [ -z "$ray_llm_dotenv_quote" ]; then
            ray_llm_dotenv_value=${ray_llm_dotenv_value%%[[:space:]]#*}
            ray_llm_dotenv_value=${ray_llm_dotenv_value%"${ray_llm_dotenv_value##*[![:space:]]}"}
        fi
        "$2" "$ray_llm_dotenv_key" "$ray_llm_dotenv_value"
    done <"$1"
    unset ray_llm_dotenv_line ray_llm_dotenv_key ray_llm_dotenv_value ray_llm_dotenv_trimmed \
        ray_llm_dotenv_quote ray_llm_dotenv_after
}
