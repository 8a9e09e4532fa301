# BookTrader + pgmux, the way its users run it (deploy/README.md).
#
#   make up            docker compose up -d (development); PROD=1 adds the production override
#   make down          stop and remove the stack (volumes are kept)
#   make logs          follow the logs (SERVICE=db for one service)
#   make ps            docker compose ps
#   make health        db pg_isready, pgmux /readyz, Django checks through pgmux,
#                      and the backend connection count; STACK=local checks
#                      deploy/local-stack.sh instead of compose
#   make local-stack   the same topology as plain processes (no container engine)
#   make deploy-check  the deployment proofs (deploy/check.sh)

COMPOSE_CMD := $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
COMPOSE_FILES := -f deploy/docker-compose.yml $(if $(PROD),-f deploy/docker-compose.prod.yml)
COMPOSE ?= $(COMPOSE_CMD) $(COMPOSE_FILES)
STACK ?= compose
SERVICE ?=

.PHONY: up down logs ps health local-stack deploy-check

up:
	$(COMPOSE) up -d --build

down:
	$(COMPOSE) down

logs:
	$(COMPOSE) logs -f $(SERVICE)

ps:
	$(COMPOSE) ps

health:
	@STACK='$(STACK)' COMPOSE='$(COMPOSE)' deploy/health.sh

local-stack:
	deploy/local-stack.sh up $(if $(PROD),--prod)

deploy-check:
	deploy/check.sh
