"""Who may do what (API keys, roles, rate limits) and the audit trail of what was done."""
