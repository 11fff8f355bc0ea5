"""Integrations with other libraries, each an optional extra (`jobq[django]`,
`jobq[sqlalchemy]`). The core never imports these modules, nor the libraries they need."""
