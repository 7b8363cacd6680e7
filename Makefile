# Installs ufs, its manual page and its shell completions.
#
#   make install                      # build (cargo, release) and install under /usr/local
#   make install PREFIX=/usr DESTDIR=/tmp/pkg
#   make install-fsck                 # also fsck.overlay, a link to ufs (ufs check's fsck form)
#   make install-docker               # also BINDIR/fuse-overlayfs, a link to ufs, for docker's
#                                     # fuse-overlayfs storage driver (docs/DOCKER.md)
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

.PHONY: all build install install-fsck install-docker uninstall

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

# docker runs the program named fuse-overlayfs from its PATH, where /usr/local/bin comes before
# /usr/bin (Debian's fuse-overlayfs). A real fuse-overlayfs installed here is not replaced.
install-docker: install
	@if [ -e $(DESTDIR)$(BINDIR)/fuse-overlayfs ] && [ ! -L $(DESTDIR)$(BINDIR)/fuse-overlayfs ]; then \
		echo "$(DESTDIR)$(BINDIR)/fuse-overlayfs is not a link; not replacing it" >&2; exit 1; fi
	ln -sf $(abspath $(BINDIR))/ufs $(DESTDIR)$(BINDIR)/fuse-overlayfs

# The fuse-overlayfs link goes only if it leads to this ufs.
uninstall:
	if [ "$$(readlink $(DESTDIR)$(BINDIR)/fuse-overlayfs)" = "$(abspath $(BINDIR))/ufs" ]; then \
		rm -f $(DESTDIR)$(BINDIR)/fuse-overlayfs; fi
	rm -f $(DESTDIR)$(BINDIR)/ufs $(DESTDIR)$(MANDIR)/man8/ufs.8 $(DESTDIR)$(BASHDIR)/ufs \
		$(DESTDIR)$(ZSHDIR)/_ufs $(DESTDIR)$(FISHDIR)/ufs.fish $(DESTDIR)$(SBINDIR)/fsck.overlay
