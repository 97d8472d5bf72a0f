# Defaults of the tacet-ca element; see README.md.
# PEM file on the build host: the CA whose client certificates the agent accepts.
export TACET_CLIENT_CA=${TACET_CLIENT_CA:-}
