"""Text replies of a simulated model (pure): a support reply whose language, length,
signature and wording depend on the model's quality draw, so output checks and judges
measure something real.

A right German reply is three sentences: a greeting, what happens next (by the ticket's
category) and the signature `Ihr Acme-Team`. A wrong one carries one of `TEXT_FLAWS`,
picked by the scenario's `quality.text_flaws` weights:

    english     the reply in English (signed "Your Acme Team")
    too_long    two more sentences (five in all)
    unsigned    signed "Ihr Support-Team" instead
    as_an_ai    opens with "Als KI ..."
    markup      the body wrapped in <b>...</b>

An English request (no German asked for in the system prompt) gets the English reply.
"""

from __future__ import annotations

TEXT_FLAWS = ("english", "too_long", "unsigned", "as_an_ai", "markup")
SIGNATURE = "Ihr Acme-Team"

_GREETING_DE = "Guten Tag, vielen Dank für Ihre Nachricht."
_BODY_DE = {
    "billing": "Wir prüfen Ihre Rechnung umgehend und melden uns innerhalb eines Werktages "
    "bei Ihnen.",
    "bug": "Es tut uns leid, dass etwas nicht funktioniert; unser Technikteam sieht sich "
    "den Fehler sofort an.",
    "account": "Wir helfen Ihnen gern, wieder Zugang zu Ihrem Konto zu bekommen.",
    "other": "Wir kümmern uns um Ihr Anliegen und melden uns in Kürze bei Ihnen.",
}
_MORE_DE = (
    "Bitte haben Sie noch etwas Geduld, während wir alle Einzelheiten zusammentragen. "
    "Wir danken Ihnen sehr herzlich für Ihr Verständnis und Ihre Treue."
)
_GREETING_EN = "Hello, thank you for your message."
_BODY_EN = {
    "billing": "We are checking your invoice right away and will get back to you within "
    "one business day.",
    "bug": "We are sorry something is not working; our engineers are looking into the error now.",
    "account": "We are glad to help you get back into your account.",
    "other": "We are looking into your request and will get back to you shortly.",
}


def reply(category: str, german: bool, flaw: str | None) -> str:
    """The reply to a ticket of `category`, right (`flaw` None) or with that flaw."""
    if not german or flaw == "english":
        return f"{_GREETING_EN} {_BODY_EN[category]} Kind regards, your Acme Team"
    body = _BODY_DE[category]
    if flaw == "markup":
        body = f"<b>{body}</b>"
    greeting = _GREETING_DE
    if flaw == "as_an_ai":
        greeting = "Als KI kann ich das nicht selbst prüfen, aber vielen Dank für Ihre Nachricht."
    signature = "Herzliche Grüße, Ihr Support-Team" if flaw == "unsigned" else SIGNATURE
    more = f" {_MORE_DE}" if flaw == "too_long" else ""
    return f"{greeting} {body}{more} {signature}"
