from mcpfleet.registry.expand import expand

ENV = {"TOKEN": "s3cret", "EMPTY": ""}


def test_set_variable_is_substituted_and_recorded() -> None:
    result = expand("Bearer ${TOKEN}", ENV)
    assert (result.text, result.used, result.problems) == ("Bearer s3cret", ("TOKEN",), ())


def test_default_applies_when_unset_or_empty_but_not_when_set() -> None:
    assert expand("${MISSING:-fallback}", ENV).text == "fallback"
    assert expand("${EMPTY:-fallback}", ENV).text == "fallback"
    assert expand("${TOKEN:-fallback}", ENV).text == "s3cret"
    assert expand("${MISSING:-}", ENV).text == ""


def test_unset_variable_without_default_is_unset_naming_it_and_what_to_do() -> None:
    result = expand("x-${MISSING}-y", ENV)
    assert result.text == "x--y" and result.problems == ()
    assert [u.message() for u in result.unset] == [
        "${MISSING} is not set (set it in the environment, or write $${MISSING} for a literal)"
    ]
    # A gateway that reloads its file is told a variable set now needs a restart: chosen by kind, not text.
    assert [u.message(running=True) for u in result.unset] == [
        "${MISSING} is not set (set it in the gateway's environment and restart it: a reload reads the file, not"
        " new variables, or write $${MISSING} for a literal)"
    ]


def test_env_prefix_of_vscode_cursor_and_windsurf_is_the_same_variable() -> None:
    assert expand("Bearer ${env:TOKEN}", ENV).text == "Bearer s3cret"
    assert expand("${env:MISSING:-d}", ENV).text == "d"
    assert [u.message() for u in expand("${env:MISSING}", ENV).unset] == [
        "${env:MISSING} is not set (set it in the environment, or write $${env:MISSING} for a literal)"
    ]
    # A variable called `env` is still a variable.
    assert expand("${env:-fallback}", ENV).text == "fallback"


def test_vscode_input_has_no_value_and_says_what_to_write_instead() -> None:
    result = expand("Bearer ${input:github-token}", ENV)
    assert result.text == "Bearer " and result.problems == ()
    assert result.unset and "${input:github-token} is a VS Code input" in result.unset[0].message()
    assert "write ${NAME} instead" in result.unset[0].message(running=True)


def test_empty_but_set_variable_without_default_is_kept_empty() -> None:
    assert expand("[${EMPTY}]", ENV).text == "[]"


def test_dollar_escapes_and_lone_dollars() -> None:
    assert expand("cost $$5 and $HOME stays", ENV).text == "cost $5 and $HOME stays"
    assert expand("$${TOKEN}", ENV).text == "${TOKEN}"


def test_malformed_references_are_reported() -> None:
    assert expand("${1BAD}", ENV).problems
    assert expand("${UNCLOSED", ENV).problems
    assert expand("${input:}", ENV).problems
    assert expand("${workspace:x}", ENV).problems
