# Installs ufs, its manual page and its shell completions.
#
#   make install                      # build (cargo, release) and install under /usr/local
#   make install PREFIX=/usr DESTDIR=/tmp/pkg
#   make install-fsck                 # also fsck.overlay, a link to ufs (ufs check's fsck form)
#   make uninstall
#
# UFS names the binary to install (default: the release build); NO_BUILD=1 skips cargo.

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
SBINDIR ?= $(PREFIX)/sbin
MANDIR ?= $(PREFIX)/share/man
BASHDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHDIR ?= $(PREFIX)/share/zsh/site-functions
FISHDIR ?= $(PREFIX)/share/fish/vendor_completions.d
CARGO ?= cargo
UFS ?= target/release/ufs

.PHONY: all build install install-fsck uninstall

all: build

build:
	$(CARGO) build --release

install: $(if $(NO_BUILD),,build)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(BASHDIR) \
		$(DESTDIR)$(ZSHDIR) $(DESTDIR)$(FISHDIR)
	install -m 0755 $(UFS) $(DESTDIR)$(BINDIR)/ufs
	$(UFS) man > $(DESTDIR)$(MANDIR)/man8/ufs.8
	$(UFS) completions bash > $(DESTDIR)$(BASHDIR)/ufs
	$(UFS) completions zsh > $(DESTDIR)$(ZSHDIR)/_ufs
	$(UFS) completions fish > $(DESTDIR)$(FISHDIR)/ufs.fish

install-fsck: install
	install -d $(DESTDIR)$(SBINDIR)
	ln -sf $(abspath $(BINDIR))/ufs $(DESTDIR)$(SBINDIR)/fsck.overlay

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/ufs $(DESTDIR)$(MANDIR)/man8/ufs.8 $(DESTDIR)$(BASHDIR)/ufs \
		$(DESTDIR)$(ZSHDIR)/_ufs $(DESTDIR)$(FISHDIR)/ufs.fish $(DESTDIR)$(SBINDIR)/fsck.overlay
