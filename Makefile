# moemesh — one non-recursive Makefile (STYLE.md "Builds are boring").
#
#   make            library, the four programs and the test binaries
#   make test       install missing packages, build, run every test (then again under ASan+UBSan)
#   make unit       the plain suite only (quick loop while developing)
#   make SAN=1 ...  the same targets built with ASan+UBSan into build/san/
#   make demo       build the demo model from models/stories260k and generate a story
#   make bench      benchmarks (speed lives here, never in tests)
#
# Every .c file in model/, kernels/ and wire/ goes into one static library; main.c files are
# programs. Files named *_avx2.c / *_avx512.c get their ISA flags and are chosen at run time.

CC      ?= cc
CFLAGS  ?= -O2 -g
LDFLAGS ?=
SAN     ?=

B := build$(if $(SAN),/san)

REQ_CFLAGS := -std=c11 -D_GNU_SOURCE -Wall -Wextra -I. -I$(B)/gen -MMD -MP -pthread
ifneq ($(SAN),)
REQ_CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS    += -fsanitize=address,undefined
endif
AVX2_FLAGS   := -mavx2 -mfma -mf16c
AVX512_FLAGS := $(AVX2_FLAGS) -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni
LIBS := -lzmq -lprotobuf-c -luv -lopenblas -lpcre2-8 -ljansson -lpthread -lm

LIB_SRC   := $(filter-out %/main.c,$(wildcard model/*.c kernels/*.c wire/*.c))
# protobuf-c: wire/proto/x.proto -> $(B)/gen/wire/proto/x.pb-c.{c,h}; the .c joins the library.
PROTO_C   := $(patsubst %.proto,$(B)/gen/%.pb-c.c,$(wildcard wire/proto/*.proto))
LIB_SRC   += $(PROTO_C)
COORD_SRC := $(filter-out %/main.c,$(wildcard coordinator/*.c))
XNODE_SRC := $(filter-out %/main.c,$(wildcard expert-node/*.c))
BENCH_SRC := $(filter-out %/main.c,$(wildcard bench/*.c))

obj = $(patsubst %.c,$(B)/obj/%.o,$(1))
LIB   := $(B)/libmoemesh.a
BINS  := $(B)/bin/moemesh-coordinator $(B)/bin/moemesh-expert $(B)/bin/moemesh-model \
         $(B)/bin/moemesh-bench

# One Criterion binary per source folder; tests/<folder>/*.c link the library plus that folder.
TEST_DIRS := $(notdir $(wildcard tests/*))
TEST_DIRS := $(filter-out $(notdir $(wildcard tests/*.*)),$(TEST_DIRS))
TESTS     := $(foreach d,$(TEST_DIRS),$(if $(wildcard tests/$(d)/*.c),$(B)/tests/$(d)))

# ---- fuzzing (tests/fuzz/) -------------------------------------------------------------------
#   make fuzz [FUZZ_SECONDS=60]   build the libFuzzer targets with clang and run each for a while
#   make fuzz-check               replay the seed corpora and regression inputs, then 10 s each
# tests/fuzz/fuzz_<t>.c is one libFuzzer binary build/fuzz/fuzz_<t> linking the library and the
# coordinator, all compiled by clang with -fsanitize=fuzzer-no-link,address,undefined into
# build/fuzz/obj (gcc objects cannot carry libFuzzer's coverage hooks). Seeds live in
# tests/fuzz/corpus/<t>/, inputs that once crashed in tests/fuzz/regress/<t>/; new finds go to
# build/fuzz/corpus/<t>/ so the committed corpus only changes on purpose.
.DEFAULT_GOAL := all
TEST_DIRS    := $(filter-out fuzz,$(TEST_DIRS))
TESTS        := $(foreach d,$(TEST_DIRS),$(if $(wildcard tests/$(d)/*.c),$(B)/tests/$(d)))
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_CHECK_SECONDS ?= 10
FZ           := build/fuzz
FUZZ_CFLAGS   = -std=c11 -D_GNU_SOURCE -I. -I$(B)/gen -isystem $(LLHTTP_INC) -MMD -MP -pthread \
                -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined \
                -fno-sanitize-recover=undefined -w
FUZZ_TARGETS := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BINS    := $(addprefix $(FZ)/fuzz_,$(FUZZ_TARGETS))
FUZZ_OBJ     := $(patsubst %.c,$(FZ)/obj/%.o,$(LIB_SRC) $(COORD_SRC)) \
                $(addprefix $(FZ)/obj/llhttp/,api.o http.o llhttp.o)
# The objects stay after a run (make would delete them as intermediates of the binaries).
.SECONDARY: $(FUZZ_OBJ) $(patsubst %,$(FZ)/obj/tests/fuzz/fuzz_%.o,$(FUZZ_TARGETS))
fuzz_isa = $(if $(findstring _avx512,$(1)),$(AVX512_FLAGS),$(if $(findstring _avx2,$(1)),$(AVX2_FLAGS)))

$(FZ)/obj/%.o: %.c $(PROTO_C:.c=.h) | $(B)/.deps-ok
	@mkdir -p $(@D)
	@echo "  FZCC  $<"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) $(call fuzz_isa,$<) -c $< -o $@
$(FZ)/obj/llhttp/%.o: /usr/share/llhttp/%.c | $(B)/.deps-ok
	@mkdir -p $(@D)
	@echo "  FZCC  $<"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@
$(FZ)/fuzz_%: $(FZ)/obj/tests/fuzz/fuzz_%.o $(FUZZ_OBJ)
	@echo "  FZLD  $@"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $^ $(LIBS)

# Each target runs from the repository root (the targets read ../shared), on a scratch corpus
# seeded from the committed one; a crash leaves crash-* in build/fuzz/artifacts/<t>/ and the
# log's tail on the terminal. $(1): seconds per target.
fuzz_loop = for t in $(FUZZ_TARGETS); do \
	mkdir -p $(FZ)/corpus/$$t $(FZ)/artifacts/$$t; \
	echo "  FUZZ  $$t $(1) s"; \
	ASAN_OPTIONS=detect_leaks=1 $(FZ)/fuzz_$$t -max_total_time=$(1) -print_final_stats=1 \
	    -artifact_prefix=$(FZ)/artifacts/$$t/ -rss_limit_mb=4096 \
	    $(FZ)/corpus/$$t tests/fuzz/corpus/$$t $$(ls -d tests/fuzz/regress/$$t 2>/dev/null) \
	    > $(FZ)/$$t.log 2>&1 || { tail -40 $(FZ)/$$t.log; exit 1; }; \
	grep -E 'stat::number_of_executed_units' $(FZ)/$$t.log | sed 's/^/        /'; \
	done
# Replays every committed input once (no mutation): the regression check.
replay_loop = for t in $(FUZZ_TARGETS); do \
	echo "  REPLAY $$t"; \
	$(FZ)/fuzz_$$t -runs=0 tests/fuzz/corpus/$$t $$(ls -d tests/fuzz/regress/$$t 2>/dev/null) \
	    > $(FZ)/$$t.replay.log 2>&1 || { tail -40 $(FZ)/$$t.replay.log; exit 1; }; \
	done

.PHONY: fuzz fuzz-build fuzz-check
fuzz-build: $(FUZZ_BINS)
fuzz: fuzz-build
	@$(call fuzz_loop,$(FUZZ_SECONDS))
fuzz-check: fuzz-build
	@$(replay_loop)
	@$(call fuzz_loop,$(FUZZ_CHECK_SECONDS))
ifeq ($(SAN),)
test: fuzz-check
endif
# ---- end of fuzzing ---------------------------------------------------------------------------

.PHONY: all deps test unit demo bench clean format
all: $(LIB) $(BINS) $(TESTS)

# Packages: checked once per build directory; deploy/install-deps.sh is idempotent.
$(B)/.deps-ok: deploy/install-deps.sh
	@./deploy/install-deps.sh
	@mkdir -p $(@D) && touch $@
deps: $(B)/.deps-ok

$(B)/obj/%.o: %.c | $(B)/.deps-ok
	@mkdir -p $(@D)
	@echo "  CC    $<"
	@$(CC) $(REQ_CFLAGS) $(CFLAGS) $(if $(findstring _avx512,$<),$(AVX512_FLAGS),$(if $(findstring _avx2,$<),$(AVX2_FLAGS))) -c $< -o $@

$(B)/gen/%.pb-c.c $(B)/gen/%.pb-c.h: %.proto | $(B)/.deps-ok
	@mkdir -p $(B)/gen
	@echo "  PROTOC $<"
	@protoc-c --c_out=$(B)/gen $<
# Keep the generated .c (make would delete it as an intermediate of the .o).
.SECONDARY: $(PROTO_C)
# The first build has no .d files yet: wire objects wait for the generated headers explicitly.
$(call obj,$(filter wire/%,$(LIB_SRC))): $(PROTO_C:.c=.h)

# llhttp, Node's own HTTP parser, is compiled from the C sources Debian's node-llhttp package
# ships rather than copied into the tree; its warnings are not ours to fix.
LLHTTP_INC := /usr/share/include/llhttp
LLHTTP_OBJ := $(addprefix $(B)/obj/llhttp/,api.o http.o llhttp.o)
# On a fresh machine the sources appear only once install-deps.sh has run: this rule lets make
# wait for that instead of giving up on a missing prerequisite, and .PRECIOUS keeps make from
# deleting them afterwards as if it had made them.
.PRECIOUS: /usr/share/llhttp/%.c
/usr/share/llhttp/%.c: | $(B)/.deps-ok
	@test -f $@ || { echo "missing $@: is node-llhttp installed? (deploy/install-deps.sh)"; exit 1; }
$(B)/obj/llhttp/%.o: /usr/share/llhttp/%.c | $(B)/.deps-ok
	@mkdir -p $(@D)
	@echo "  CC    $<"
	@$(CC) $(REQ_CFLAGS) $(CFLAGS) -isystem $(LLHTTP_INC) -w -c $< -o $@
$(call obj,coordinator/http.c): REQ_CFLAGS += -isystem $(LLHTTP_INC)

$(LIB): $(call obj,$(LIB_SRC)) $(LLHTTP_OBJ)
	@echo "  AR    $@"
	@rm -f $@ && ar rcs $@ $^

link = @mkdir -p $(@D) && echo "  LD    $@" && $(CC) $(REQ_CFLAGS) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LIBS)

$(B)/bin/moemesh-coordinator: $(call obj,coordinator/main.c $(COORD_SRC)) $(LIB)
	$(link)
$(B)/bin/moemesh-expert: $(call obj,expert-node/main.c $(XNODE_SRC)) $(LIB)
	$(link)
$(B)/bin/moemesh-model: $(call obj,model/main.c) $(LIB)
	$(link)
$(B)/bin/moemesh-bench: $(call obj,bench/main.c $(BENCH_SRC) $(COORD_SRC) $(XNODE_SRC)) $(LIB)
	$(link)

# tests/coordinator (and tests/deploy, for the LeaderWorkerSet flags) link coordinator objects,
# tests/expert-node the node's, tests/bench what moemesh-bench links; others the library.
test_extra = $(if $(filter coordinator deploy,$(1)),$(COORD_SRC))$(if $(filter expert-node,$(1)),$(XNODE_SRC))$(if $(filter bench,$(1)),$(BENCH_SRC) $(COORD_SRC) $(XNODE_SRC))
define test_rule
$(B)/tests/$(1): $(call obj,$(wildcard tests/$(1)/*.c) $(call test_extra,$(1))) $(LIB)
	$$(link) -lcriterion
endef
$(foreach d,$(TEST_DIRS),$(eval $(call test_rule,$(d))))

unit: all
	@tests/run.sh $(TESTS)

# The full suite: plain, then the same binaries built with ASan+UBSan (build/san/).
# tests/run.sh runs each binary and prints one closing "N passed, N failed" line.
ifeq ($(SAN),)
test: all
	@$(MAKE) --no-print-directory SAN=1 all
	@tests/run.sh $(TESTS) $(patsubst build/%,build/san/%,$(TESTS))
else
test: unit
endif

demo: all
	@./models/demo.sh $(B)/bin

bench: all
	@$(B)/bin/moemesh-bench kernels

# Issue 10's speed table on the full-size test shape (writes ~10 GB of models once; see the
# script's header). Not part of `make bench`: it takes tens of minutes.
.PHONY: bench-speed
bench-speed: all
	@bench/speed.sh --bin $(B)/bin

# ---- image: deploy/Dockerfile (deploy/README.md) ----
# Needs a reachable Docker daemon; where there is none (only the CLI, or nothing), it says so
# and fails (exit 1), so `make image && docker push` never pushes a stale image.
IMAGE ?= moemesh:dev
.PHONY: image
image:
	@command -v docker >/dev/null 2>&1 || { echo "make image: no docker command here: cannot build $(IMAGE) (install Docker, or build deploy/Dockerfile elsewhere)" >&2; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "make image: docker is installed but no daemon answers (docker info failed): cannot build $(IMAGE) here" >&2; exit 1; }
	docker build -f deploy/Dockerfile -t $(IMAGE) \
	    --build-arg VERSION=$$(git describe --tags --always 2>/dev/null || echo dev) \
	    --build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) .
# ---- end image ----

format:
	@clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)
