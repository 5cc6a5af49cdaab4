"""Use cases. The only code that touches the database and the key-value store; each public
function owns its transaction."""
