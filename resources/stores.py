"""One tenant's store handles, built together and only for that tenant."""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, NamedTuple

from resources.analysis import get_analyzer
from resources.backends import (
    BackendConfigError,
    Backends,
    ControlPlaneOnlyError,
    TenantEnvironment,
    VectorSpaces,
)
from resources.catalog import Catalog
from resources.cluster_catalog import (
    ClusterCatalog,
    ReservedTenantError,
    TenantRecord,
    TenantState,
    tenant_name,
)
from resources.embedder import Embedder
from resources.embedding_backends import EmbedderSpec
from resources.keywords import KeywordIndex
from resources.objects import ObjectStore
from resources.ocr import TesseractOcr
from resources.settings import AlienSettings
from resources.tenancy import TenantId, UnknownTenantError
from resources.vectors import VectorIndex, VectorSpace


@lru_cache(maxsize=4)
def shared_embedder(
    model: str, batch_size: int, device: str, worker: bool, models_dir: Path, query_engine: bool
) -> Embedder:
    """The process's embedder (the model is not tenant data, so tenants share it)."""
    return Embedder(
        model=model,
        batch_size=batch_size,
        device=device,
        worker=worker,
        models_dir=models_dir,
        query_engine=query_engine,
    )


def get_embedder(settings: AlienSettings, model: str | None = None) -> Embedder:
    """The embedder of ``model`` (a spec; by default the configured one)."""
    return shared_embedder(
        model or settings.embedding_model,
        settings.embedding_batch_size,
        settings.embedding_device,
        settings.embedding_worker,
        settings.models_dir,
        settings.embedding_query_engine,
    )


_BACKENDS: dict[tuple[tuple[str, str], ...], Backends] = {}
_CLUSTER: dict[tuple[str, ...], ClusterCatalog] = {}
_CACHE_LOCK = threading.Lock()


def settings_key(settings: AlienSettings) -> tuple[tuple[str, str], ...]:
    """Every setting, secrets included, so no two configurations share a cached object."""

    def reveal(value: object) -> object:
        return value.get_secret_value() if hasattr(value, "get_secret_value") else value

    return tuple(
        (name, str(reveal(getattr(settings, name)))) for name in sorted(type(settings).model_fields)
    )


def _backends(settings: AlienSettings) -> Backends:
    """One ``Backends`` (and so one pool per server) per distinct configuration."""
    key = settings_key(settings)
    with _CACHE_LOCK:
        if key not in _BACKENDS:
            embedder = get_embedder(settings)
            _BACKENDS[key] = Backends(settings, embedder.model_name, embedder.dimension)
        return _BACKENDS[key]


def cluster_catalog(settings: AlienSettings) -> ClusterCatalog:
    """The tenant registry of these settings (control plane only): PostgreSQL in cluster
    mode with a catalog server, else SQLite under ``ALIEN_HOME/system``."""
    if settings.tenant_plane:
        raise ControlPlaneOnlyError("a tenant's data plane has no access to the tenant registry")
    if settings.mode == "cluster" and settings.postgres_url:
        key: tuple[str, ...] = ("pg", settings.postgres_url, settings.cluster_database)
    else:
        key = ("sqlite", str(settings.system_dir / "cluster.db"))
    with _CACHE_LOCK:
        if key not in _CLUSTER:
            if key[0] == "pg":
                _CLUSTER[key] = ClusterCatalog.postgres(key[1], key[2])
            else:
                _CLUSTER[key] = ClusterCatalog.sqlite(Path(key[1]), settings.tenants_dir)
        return _CLUSTER[key]


class SpaceSearch(NamedTuple):
    """One space a query reads: its index, its model's embedder, and which datasets."""

    index: VectorIndex
    embedder: Embedder
    dataset: str | None  # only this dataset's points (None: any)
    exclude: tuple[str, ...]  # none of these datasets' points (they search their own)


@dataclass(frozen=True)
class SpaceMap:
    """Where each dataset's vectors are searched and written, at one moment.

    ``default``: the default space searched; ``default_target``: the one the pipeline
    writes for datasets without a model of their own (the same but during a model change).
    ``own``: each dataset searched in a space of its own; ``targets``: each dataset with
    a model of its own, and the space its vectors go to (where it is searched while that
    space cannot be made: ``waiting``).
    """

    default: VectorSpace
    default_target: VectorSpace
    own: dict[str, VectorSpace]
    targets: dict[str, VectorSpace]
    waiting: tuple[str, ...] = ()  # datasets whose own space the control plane is to make

    def reading(self, dataset: str) -> VectorSpace:
        return self.own.get(dataset, self.default)

    def target(self, dataset: str) -> VectorSpace:
        return self.targets.get(dataset, self.default_target)

    def written(self) -> list[VectorSpace]:
        """Every space the pipeline writes, default first (each once)."""
        spaces = {self.default_target.name: self.default_target}
        for space in self.targets.values():
            spaces.setdefault(space.name, space)
        return list(spaces.values())


@dataclass
class TenantStores:
    """Every store of one tenant. Built only by ``TenantRegistry.open``/``create``."""

    tenant: TenantId
    settings: AlienSettings
    root: Path
    catalog: Catalog
    objects: ObjectStore
    vector_store: VectorSpaces  # opens the tenant's vector spaces (one per model)
    keywords: KeywordIndex
    embedder: Embedder
    ocr: TesseractOcr
    generation: str = ""
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _spaces: dict[tuple[str, str], VectorIndex] = field(default_factory=dict)
    _spaces_guard: threading.Lock = field(default_factory=threading.Lock)
    _searched: str | None = None  # the space the last search read

    # -- vector spaces -------------------------------------------------------------------
    # Search reads the active space; the pipeline writes the configured model's space. They
    # are one and the same except during a model change, which fills the new space while
    # search keeps reading the old one, then switches over (``alien.pipeline.switch_space``).
    def active_space(self) -> VectorSpace:
        """The space searches read now (one catalog query: a switch made by another process
        is seen at the next search)."""
        return self.catalog.active_space(self._first_space)

    @property
    def _configured(self) -> VectorSpace:
        return VectorSpace(self.embedder.model_name, self.embedder.dimension)

    def _first_space(self) -> VectorSpace:
        """A tenant's first space: its collection holds what the embeddings step recorded
        (a tenant from before spaces existed may be upgraded with another model configured),
        or, for a tenant with nothing embedded yet, the configured model's vectors."""
        found = self.catalog.embedded_with(EMBEDDINGS_STEP)
        return VectorSpace(*found) if found else self._configured

    def target_space(self, active: VectorSpace | None = None) -> VectorSpace:
        """The configured model's space: the active one, or the one a model change fills
        (keeping the active one's chunks when the new model cuts the same)."""
        return self._target_in("", self.embedder, active or self.active_space())

    def _target_in(self, dataset: str, embedder: Embedder, reading: VectorSpace) -> VectorSpace:
        """The space of ``embedder``'s model in a scope (the default, "", or a dataset's
        own): the one searched, the one being filled, or a new one (keeping the chunks of
        the one searched when the model cuts the same)."""
        model, dim = embedder.model_name, embedder.dimension
        if reading.dataset == dataset and reading.holds(model, dim):
            return reading
        for space, _ in self.catalog.vector_spaces():
            if space.dataset == dataset and space.holds(model, dim):
                return space
        try:
            same_cut = self.embedder_of(reading.model).chunking == embedder.chunking
        except FileNotFoundError:  # the old model's files are gone: its chunks stay as cut
            same_cut = False
        return VectorSpace.of(model, dim, reading.chunked_as if same_cut else "", dataset)

    def space_map(self, *, prepare: bool = False) -> SpaceMap:
        """Which space each dataset is searched in and written to, now (a few catalog
        queries: a step reads it once). ``prepare``: make the spaces of datasets' own
        models that are not made yet; a dataset whose space this process cannot make (a
        tenant's data plane: the control plane makes collections) stays where it is,
        ``waiting``."""
        models = {}
        for dataset in self.catalog.datasets():
            wanted = dataset.config.get("embedding_model")
            if wanted and (model := str(EmbedderSpec.parse(wanted))) != self.embedder.model_name:
                models[dataset.name] = model
        default, own = self.active_space(), self.catalog.dataset_spaces()
        targets, waiting = {}, []
        for name, model in models.items():
            target = self._target_in(name, self.embedder_of(model), own.get(name, default))
            if prepare and not target.created:
                try:
                    target = self.prepare_space(target)
                except ControlPlaneOnlyError:
                    waiting.append(name)
                    target = own.get(name, default)
            targets[name] = target
        return SpaceMap(default, self.target_space(default), own, targets, tuple(waiting))

    def model_work(self) -> str | None:
        """What a model change still waits a run for, or None: a space is not searched yet
        (``"model/dim"``, a dataset's ``"dataset: model/dim"``), or is and its own chunks
        are still to be cut (``".../chunks"``)."""
        spaces = self.space_map(prepare=True)  # a space it cannot make is no work here
        if spaces.default_target != spaces.default:
            return f"{spaces.default_target.model}/{spaces.default_target.dim}"
        for dataset in sorted(set(spaces.targets) | set(spaces.own)):
            target = spaces.target(dataset)
            if target != spaces.reading(dataset):
                return f"{dataset}: {target.model}/{target.dim}"
        if self.catalog.rechunk_pending():
            target = spaces.default_target
            return f"{target.model}/{target.dim}/chunks"
        return None

    def model_work_pending(self) -> bool:
        return self.model_work() is not None

    def embedder_of(self, model: str) -> Embedder:
        """The embedder of ``model``: the configured one, or another loaded on first use."""
        if model == self.embedder.model_name:
            return self.embedder
        return get_embedder(self.settings, model)

    def chunking(self, space: VectorSpace | None = None) -> tuple[Embedder, str]:
        """The tokenizer and window chunks are cut with, and the name the chunks step records
        for them: those of the space searched (by default the default one). During a model
        change the chunks stay those the searched vectors were made from; the new model
        embeds them, and if it cuts text otherwise, its own chunks are made once searches
        read its space."""
        space = space or self.active_space()
        return self.embedder_of(space.model), space.chunked_as

    def vectors_in(self, space: VectorSpace) -> VectorIndex:
        """This process's handle of one space (opened once; a space dropped and made again
        is another handle)."""
        key = (space.name, space.created)
        with self._spaces_guard:
            handle = self._spaces.get(key)
            if handle is None:
                handle = self.vector_store.open(self.tenant, self.root, space, self.generation)
                self._spaces[key] = handle
            return handle

    def _evict(self, keep: set[tuple[str, str]]) -> None:
        """Close this process's handles of spaces the catalog no longer has (another process
        switched and dropped them): an embedded one holds every vector in memory."""
        with self._spaces_guard:
            gone = {k: h for k, h in self._spaces.items() if k not in keep and k[1]}
            for key in gone:
                del self._spaces[key]
        for handle in gone.values():
            handle.close()

    @property
    def vectors(self) -> VectorIndex:
        """The space the pipeline writes, checks compare and repair mends: the configured
        model's (searches read ``active_space``, see ``search_vectors``)."""
        return self.vectors_in(self.target_space())

    def search_vectors(self) -> tuple[VectorIndex, Embedder]:
        """The default active space and the embedder of its model, for a query."""
        (index, embedder, _, _), *_ = self.search_spaces()
        return index, embedder

    def search_spaces(self, dataset: str | None = None) -> list[SpaceSearch]:
        """The spaces a query reads, each with its model's embedder and its filter: the
        default space (less the datasets searched in their own), then each dataset's own;
        only the one ``dataset`` is searched in when given."""
        # during a model change, queries go the way the active spaces' vectors went
        default, own = self.active_space(), self.catalog.dataset_spaces()
        names = ",".join(sorted([default.name, *(s.name for s in own.values())]))
        if names != self._searched:  # a switch (here or elsewhere) since the last search
            self._searched = names
            self._evict({(s.name, s.created) for s, _ in self.catalog.vector_spaces()})
        if dataset is not None:
            chosen = [(own.get(dataset, default), dataset, ())]
        else:
            chosen = [(default, None, tuple(sorted(own)))]
            chosen += [(space, name, ()) for name, space in sorted(own.items())]
        return [
            SpaceSearch(self.vectors_in(space), self.embedder_of(space.model), name, excluded)
            for space, name, excluded in chosen
        ]

    def prepare_space(self, space: VectorSpace) -> VectorSpace:
        """Make the space's collection (where the store needs that) and record it; the space
        as recorded (with its creation time, which keys this process's handles)."""
        self.vector_store.prepare_space(self.tenant, self.root, space)
        self.catalog.add_vector_space(space)
        return next(s for s, _ in self.catalog.vector_spaces() if s.name == space.name)

    def switch_space(self, space: VectorSpace) -> list[VectorSpace]:
        """Make ``space`` the default one searches read, then drop every other default
        space; the dropped ones.
        When its model cuts other chunks, the next run cuts and embeds every entry again."""
        before = self.active_space()
        self.catalog.activate_space(space.name, rechunk=before.chunked_as != space.chunked_as)
        dropped = []
        for other, active in self.catalog.vector_spaces():
            if active or other.name == space.name or other.dataset:
                continue
            self.drop_space(other)
            dropped.append(other)
        return dropped

    def drop_space(self, space: VectorSpace) -> None:
        with self._spaces_guard:
            handles = [self._spaces.pop(k) for k in list(self._spaces) if k[0] == space.name]
        for handle in handles:
            handle.close()
        self.vector_store.drop_space(self.tenant, self.root, space)
        self.catalog.forget_space(space.name)

    def delete_vectors(self, entry_ids: list[str]) -> int:
        """Remove entries' vectors from every space (a delete during a model change too)."""
        removed = 0
        for space, _ in self.catalog.vector_spaces() or [(self.active_space(), True)]:
            removed += self.vectors_in(space).delete_entries(entry_ids)
        return removed

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive lock for ``name`` across threads and processes on this machine."""
        path = self.root / "locks" / f"{name}.lock"
        path.parent.mkdir(exist_ok=True)
        thread_lock = self._locks.setdefault(name, threading.Lock())
        with thread_lock, path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def close(self) -> None:
        self.catalog.close()
        with self._spaces_guard:
            handles, self._spaces = list(self._spaces.values()), {}
        for handle in handles:
            handle.close()
        self.keywords.close()


class RetireError(RuntimeError):
    """Some store of a tenant could not be removed; the tenant stays registered so that a
    later retirement finishes the work."""


TENANT_PLANE_GENERATION = "tenant-plane"
# The step whose manifest records each entry's embedding model (``alien.pipeline``).
EMBEDDINGS_STEP = "embeddings"


class TenantRegistry:
    """Provisions, opens and retires tenants: the cluster catalog says which exist, the
    backends make and reach their stores. The only place that builds store handles.

    Handles are cached per process with the tenant's generation; a tenant retired or
    re-created by another process is noticed at the next ``open``, and its old handles are
    closed, never served.
    """

    # Keyed by the configuration's backends too: handles made with one configuration's
    # credentials are never handed out under another's.
    _open: ClassVar[dict[tuple[int, Path, str], TenantStores]] = {}
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, settings: AlienSettings) -> None:
        self.settings = settings
        self.root = settings.tenants_dir
        self.backends = _backends(settings)

    @property
    def cluster(self) -> ClusterCatalog:
        return cluster_catalog(self.settings)

    def tenant_dir(self, tenant: TenantId) -> Path:
        """Local state of the tenant: embedded stores and locks (also in cluster mode)."""
        return self.root / TenantId(tenant)

    # -- which tenants exist -------------------------------------------------------------
    def exists(self, tenant: str) -> bool:
        return self._generation(TenantId(tenant)) is not None

    def _generation(self, tenant: TenantId) -> str | None:
        if self.settings.tenant_plane:
            return TENANT_PLANE_GENERATION if tenant == self.settings.tenant else None
        found = self.cluster.generation(tenant)
        return found[0] if found is not None and found[1] == "ready" else None

    def list(self) -> list[TenantId]:
        """The tenants that are ready (a data plane: its own tenant only)."""
        if self.settings.tenant_plane:
            return [TenantId(self.settings.tenant or "")]
        return self.cluster.names()

    def records(self, states: tuple[TenantState, ...] | None = None) -> list[TenantRecord]:
        """Every registered tenant with its provisioning state (control plane)."""
        return self.cluster.list(states)

    # -- provisioning --------------------------------------------------------------------
    def new_name(self, tenant: str) -> TenantId:
        """A name a tenant may be created with: well formed, not reserved, and not mapping to
        one of the cluster's own databases (``alien_cluster``, ``alien_dagster``)."""
        from resources.postgres import CLUSTER_DATABASES, identifier

        tenant = tenant_name(tenant)
        if identifier(tenant) in {self.settings.cluster_database, *CLUSTER_DATABASES}:
            raise ReservedTenantError(f"tenant name {tenant!r} is the cluster's own database")
        return tenant

    def create(self, tenant: str) -> TenantStores:
        """Provision every store of the tenant (idempotent, resumable) and open them."""
        tenant = self.new_name(tenant)
        for kind in self.backends.kinds:
            self.provision_store(tenant, kind)
        return self.open(tenant)

    def provision_store(self, tenant: str, kind: str) -> str:
        """Bring one store of the tenant into existence and record it in the cluster catalog;
        the tenant is ready once every store is. A failure is recorded with its reason."""
        tenant = self.new_name(tenant)
        backend = self.backends.store(kind)
        record = self.cluster.begin(tenant)
        root = self.tenant_dir(tenant)
        try:
            if not backend.exists(tenant, root):
                self.forget(tenant)  # handles on a vanished store must not be reused
            backend.provision(tenant, root, record.generation)
            root.mkdir(parents=True, exist_ok=True)
            stores = self._build(tenant, record.generation)  # makes the embedded files
            if kind == "catalog":
                stores.catalog.create()  # migrations and the tenant row, as the tenant's role
            elif kind == "vectors":  # the configured model's space (a model change's too),
                space = stores.prepare_space(stores.target_space())  # and datasets' own
                stores.vectors_in(space).count()  # an embedded file is made now
                stores.space_map(prepare=True)
        except Exception as err:
            self.cluster.record_store(tenant, kind, "failed", f"{type(err).__name__}: {err}")
            raise
        message = f"{kind}: {backend.backend} {'server store' if backend.server else 'store'} ready"
        self.cluster.record_store(tenant, kind, "ready", message)
        done = self.cluster.get(tenant)
        if done is not None and all(
            done.stores.get(k, ("pending", ""))[0] == "ready" for k in self.backends.kinds
        ):
            self.cluster.set_state(tenant, "ready")
        return message

    def prepare_dataset_spaces(self, tenant: str) -> list[VectorSpace]:
        """Make the vector spaces the tenant's datasets' own models need and a data plane
        cannot make (its token names no new collection); those made now. The data plane's
        next token names them."""
        stores = self.open(tenant)
        before = {space.name for space, _ in stores.catalog.vector_spaces()}
        stores.space_map(prepare=True)
        return [s for s, _ in stores.catalog.vector_spaces() if s.name not in before]

    def store_exists(self, tenant: str, kind: str) -> bool:
        """Whether the tenant's part of store ``kind`` is there now (drift checks)."""
        tenant = TenantId(tenant)
        return self.backends.store(kind).exists(tenant, self.tenant_dir(tenant))

    def environment(self, tenant: str) -> TenantEnvironment:
        """The complete environment of the tenant's data plane (``alien tenant env``)."""
        tenant = TenantId(tenant)
        if self.settings.mode != "cluster":
            raise BackendConfigError("a tenant's data plane exists in cluster mode only")
        generation = self._generation(tenant)
        if generation is None:
            raise UnknownTenantError(f"unknown tenant {tenant!r}")
        return self.backends.tenant_environment(tenant, generation)

    # -- handles -------------------------------------------------------------------------
    def forget(self, tenant: str) -> None:
        """Close and drop this process's handles of the tenant (the next use reopens)."""
        with self._guard:
            stores = self._open.pop(self._key(TenantId(tenant)), None)
        if stores is not None:
            stores.close()

    def open(self, tenant: str) -> TenantStores:
        tenant = TenantId(tenant)
        generation = self._generation(tenant)
        if generation is None:
            self.forget(tenant)  # handles of a tenant retired elsewhere: closed, not kept
            raise UnknownTenantError(f"unknown tenant {tenant!r}")
        return self._build(tenant, generation)

    def _key(self, tenant: TenantId) -> tuple[int, Path, str]:
        return (id(self.backends), self.root, str(tenant))

    def _build(self, tenant: TenantId, generation: str) -> TenantStores:
        key = self._key(tenant)
        with self._guard:
            cached = self._open.get(key)
            if cached is not None and cached.generation == generation:
                return cached
            stale = self._open.pop(key, None)  # retired or re-created since: never reused
            root = self.tenant_dir(tenant)
            root.mkdir(parents=True, exist_ok=True)
            embedder = get_embedder(self.settings)
            b = self.backends
            stores = TenantStores(
                tenant=tenant,
                settings=self.settings,
                root=root,
                catalog=b.catalog.open(tenant, root, generation),
                objects=b.objects.open(tenant, root, generation),
                vector_store=b.vectors,
                keywords=b.keywords.open(
                    tenant, root, get_analyzer(self.settings.stemmer_language), generation
                ),
                embedder=embedder,
                ocr=TesseractOcr(self.settings.ocr_languages),
                generation=generation,
            )
            if self.settings.tenant_plane and not self.backends.catalog.server:
                stores.catalog.create()  # an embedded catalog in a data plane: made once
            else:  # a catalog made by older code is brought up to date once per handle
                stores.catalog.upgrade_if_behind()
            self._open[key] = stores
        if stale is not None:
            stale.close()
        return stores

    # -- retirement ----------------------------------------------------------------------
    def retain(self, tenant: str) -> bool:
        """Stop serving the tenant but keep its stores and data; whether it was registered."""
        tenant = TenantId(tenant)
        found = self.cluster.get(tenant) is not None
        if found:
            self.cluster.set_state(tenant, "retained")
        self.forget(tenant)
        return found

    def drop(self, tenant: str) -> bool:
        """Retire the tenant: remove every store, whatever its recorded state (a half-made
        tenant included), then its row. Idempotent; whether there was anything to remove."""
        tenant = TenantId(tenant)
        record = self.cluster.get(tenant)
        if record is not None:
            self.cluster.set_state(tenant, "retiring")  # no longer served from here on
        self.forget(tenant)
        root = self.tenant_dir(tenant)
        existed = record is not None or root.exists()
        failures = []
        for kind in reversed(self.backends.kinds):
            backend = self.backends.store(kind)
            try:
                existed = backend.exists(tenant, root) or existed
                backend.retire(tenant, root, record.generation if record else "")
            except Exception as err:
                failures.append(f"{kind}: {type(err).__name__}: {err}")
                if record is not None:
                    self.cluster.record_store(tenant, kind, "failed", f"retire: {failures[-1]}")
        if failures:
            raise RetireError(f"tenant {tenant} not fully retired: " + "; ".join(failures))
        shutil.rmtree(root, ignore_errors=True)
        self.cluster.remove(tenant)
        return existed
