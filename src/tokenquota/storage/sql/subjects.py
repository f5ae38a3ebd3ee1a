"""Subjects in SQL: who is metered, and the parent edges their limits roll up through.

A subject row appears the first time anything names it (``ensure_subject``),
so rules, plans and quotas can point at a subject nobody created by hand. The
parent edges are ordered (``position``) because the order is the order the
planner walks ancestors in; cycles are refused before anything is written.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from tokenquota.domain.clock import to_micros
from tokenquota.domain.errors import Conflict
from tokenquota.domain.subjects import Subject, SubjectRef, ancestors_of, check_acyclic
from tokenquota.storage.base import Layer, Page, Scope
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.parts import CatalogBase, rules_in, scope_filter
from tokenquota.wire.catalog import encode_rule, encode_subject


class SqlSubjects(CatalogBase):
    # subjects ---------------------------------------------------------------
    def get_subject(self, ref: SubjectRef) -> Subject | None:
        with self.db.tx() as conn:
            return self.subject_in(conn, ref)

    def subject_in(self, conn: Connection, ref: SubjectRef) -> Subject | None:
        row = conn.execute(sa.select(t.subjects).where(t.subjects.c.ref == str(ref))).first()
        if row is None:
            return None
        return Subject(
            ref,
            row.name,
            dict(row.metadata),
            tuple(self._parents(conn, ref)),
            row.plan_id,
        )

    def _parents(self, conn: Connection, ref: SubjectRef) -> list[SubjectRef]:
        rows = conn.execute(
            sa.select(t.subject_parents.c.parent)
            .where(t.subject_parents.c.child == str(ref))
            .order_by(t.subject_parents.c.position)
        )
        return [SubjectRef.parse(r.parent) for r in rows]

    def ensure_subject(self, conn: Connection, ref: SubjectRef, now: datetime) -> None:
        conn.execute(
            self.db.insert(t.subjects)
            .values(
                ref=str(ref),
                kind=ref.kind,
                name=None,
                metadata={},
                plan_id=None,
                created_at=to_micros(now),
            )
            .on_conflict_do_nothing()
        )

    def put_subject(
        self,
        ref: SubjectRef,
        *,
        name: str | None,
        metadata: dict[str, Any] | None,
        parents: tuple[SubjectRef, ...] | None,
        now: datetime,
        actor: str,
    ) -> Subject:
        with self._write() as conn:
            existing = self.subject_in(conn, ref)
            before = encode_subject(existing) if existing else None
            self.ensure_subject(conn, ref, now)
            values: dict[str, Any] = {}
            if name is not None:
                values["name"] = name
            if metadata is not None:
                values["metadata"] = metadata
            if values:
                conn.execute(
                    t.subjects.update().where(t.subjects.c.ref == str(ref)).values(**values)
                )
            if parents is not None:
                check_acyclic(ref, parents, lambda r: self._parents(conn, r))
                ancestors_of(ref, lambda r: parents if r == ref else self._parents(conn, r))
                for parent in parents:
                    self.ensure_subject(conn, parent, now)
                conn.execute(
                    t.subject_parents.delete().where(t.subject_parents.c.child == str(ref))
                )
                if parents:
                    conn.execute(
                        t.subject_parents.insert(),
                        [
                            {"child": str(ref), "parent": str(p), "position": i}
                            for i, p in enumerate(parents)
                        ],
                    )
            subject = self.subject_in(conn, ref)
            assert subject is not None
            if encode_subject(subject) != before:
                self.write_audit(
                    conn, now, actor, "subject.put", str(ref), before, encode_subject(subject)
                )
            return subject

    def delete_subject(self, ref: SubjectRef, *, actor: str, now: datetime) -> bool:
        with self._write() as conn:
            if self.subject_in(conn, ref) is None:
                return False
            child = conn.execute(
                sa.select(t.subject_parents.c.child)
                .where(t.subject_parents.c.parent == str(ref))
                .limit(1)
            ).first()
            if child is not None:
                raise Conflict(f"{ref} still has children; detach them first")
            scope = Scope(Layer.OVERRIDE, str(ref))
            before = rules_in(conn, scope)
            conn.execute(scope_filter(t.rules.delete(), scope))
            conn.execute(t.subject_parents.delete().where(t.subject_parents.c.child == str(ref)))
            conn.execute(t.subjects.delete().where(t.subjects.c.ref == str(ref)))
            self.write_audit(
                conn, now, actor, "subject.delete", str(ref), [encode_rule(r) for r in before], None
            )
            return True

    def list_subjects(
        self, *, kind: str | None, parent: SubjectRef | None, offset: int, limit: int
    ) -> Page[Subject]:
        query = sa.select(t.subjects.c.ref)
        if kind is not None:
            query = query.where(t.subjects.c.kind == kind)
        if parent is not None:
            query = query.join(
                t.subject_parents, t.subject_parents.c.child == t.subjects.c.ref
            ).where(t.subject_parents.c.parent == str(parent))
        with self.db.tx() as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(query.subquery())
            ).scalar_one()
            refs = conn.execute(
                query.order_by(t.subjects.c.ref).offset(offset).limit(limit)
            ).scalars()
            items = [self.subject_in(conn, SubjectRef.parse(r)) for r in refs]
        return Page([s for s in items if s], total, offset, limit)

    def ancestors(self, ref: SubjectRef) -> list[SubjectRef]:
        with self.db.tx() as conn:
            return ancestors_of(ref, lambda r: self._parents(conn, r))
